"""Run a bench script's `--smoke` mode (CPU, tiny shapes) in a fresh process and read its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run_smoke(script: str, out: Path, *args: str, timeout: int = 300, cwd: Path = REPO) -> Any:
    """`bench/<script> --smoke [args] --out <out>`'s result; the run's stderr if it fails.
    `OUT` is dropped from the environment so the result is not also copied there."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--smoke", *args, "--out", str(out)],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False,
        env={k: v for k, v in os.environ.items() if k != "OUT"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())
