"""Run a test's check script in a fresh Python, for Triton kernels under the CPU interpreter.

Fresh because Triton reads `TRITON_INTERPRET` when it is first imported: the rest of the
suite imports it without, so an interpreter run cannot share the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_python(script: str, *args: str, interpret: bool = False, timeout: int = 300) -> str:
    """`script`'s stdout, run with the repository importable (and Triton's interpreter on
    when `interpret`); a failed run fails the test with the script's stderr."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(REPO)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def run_json(script: str, *args: str, interpret: bool, timeout: int = 300) -> Any:
    """The JSON the script prints on its last line. `interpret` has no default: a GPU check
    that forgot it once ran under the interpreter and failed on its rounding."""
    stdout = run_python(script, *args, interpret=interpret, timeout=timeout)
    return json.loads(stdout.strip().splitlines()[-1])
