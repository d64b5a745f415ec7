"""`python -m training PRESET_OR_YAML [--set k=v ...]`: the same as `teller train`."""

import sys

from training.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
