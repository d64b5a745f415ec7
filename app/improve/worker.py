"""`python -m app.improve.worker RUN_DIR`: one training job, outside the web server.

Reads RUN_DIR/job.json (the `teller train` arguments and what to evaluate), runs
`teller train`, then the evaluation gate (`python -m app.improve.gate_eval`: every evaluation
on one load of the model), each as its own command, and writes RUN_DIR/state.json at every
phase. The server only reads these files, so a restarted
server finds the job where it is; this process runs in its own session and outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

TELLER = [sys.executable, "-m", "app.cli"]


def write_state(run_dir: Path, **state: object) -> None:
    tmp = run_dir / "state.json.tmp"
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp, run_dir / "state.json")


def _run(argv: list[str], log: Path) -> tuple[int, str]:
    with log.open("a", encoding="utf-8") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, text=True, check=False)  # noqa: S603
        out.write(proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    return proc.returncode, (errors or proc.stderr.strip().splitlines() or [""])[-1]


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0])
    spec = json.loads((run_dir / "job.json").read_text(encoding="utf-8"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    log = run_dir / "worker.log"
    if not spec.get("skip_train") and not _train(run_dir, spec, log):
        return 1
    return _evaluate(run_dir, spec, log)


def _train(run_dir: Path, spec: dict, log: Path) -> bool:
    write_state(run_dir, phase="training", pid=os.getpid())
    train = [*TELLER, "train", *spec["train"], "--output", str(run_dir), "--quiet"]
    if spec.get("resume"):
        train.append("--resume")
    code, reason = _run(train, log)
    if code != 0:
        write_state(run_dir, phase="failed", exit_code=code, error=reason or "training failed")
        return False
    return True


def _evaluate(run_dir: Path, spec: dict, log: Path) -> int:
    """Every gate evaluation in one process, on one load of the base model (gate_eval.py)."""
    write_state(run_dir, phase="evaluating", pid=os.getpid())
    code, reason = _run([sys.executable, "-m", "app.improve.gate_eval", str(run_dir)], log)
    if code != 0:
        write_state(run_dir, phase="failed", exit_code=code, error=f"evaluation: {reason}")
        return 1
    write_state(run_dir, phase="done", exit_code=0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
