"""`python -m app.improve.records_check FILE`: an uploaded Alpaca file, checked exactly as
`teller train` checks it, printed as JSON records.

Runs in a subprocess of the web server: the app never imports training code at run time
(docs/design), yet uploads must get the same validation and the same line-numbered errors
as training, so this process borrows training's reader. Exit 2 and one line on stderr for
bad data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from training.data.loading import DataError, read_records

    try:
        records = read_records(Path(argv[0]))
    except DataError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    rows = [{"instruction": r.instruction, "input": r.input, "output": r.output} for r in records]
    sys.stdout.write(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
