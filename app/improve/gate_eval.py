"""`python -m app.improve.gate_eval RUN_DIR`: the evaluation gate's scoring for one job.

Reads RUN_DIR/job.json's `evaluate` list (label, adapter folder, data file: the new version
and the current default, each on the held-out split and the finance set) and scores every
pair with `training.evaluate.evaluate_runs`, which loads the base model once for the whole
list, then writes RUN_DIR/eval-<label>.json in `teller eval --json`'s format (what
`app.improve.gate.compare` reads). Before, each pair was its own `teller eval`, each loading
the model again (docs/improvement-loop.md has the timings).

Runs in the job's worker process tree, never in the web server (the app does not import
training code at run time). Exit 2 and one line on stderr when an adapter, its base model or
a data file cannot be used.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "models_dir": "",
    "limit": 0,
    "max_checks": 50,
    "samples": 3,
    "max_new_tokens": 256,
}


def options_of(spec: dict[str, Any]) -> dict[str, Any]:
    """The scoring options of a job.json: `eval_options`, or the `teller eval` flags a job
    started by an earlier server wrote as `eval_args`."""
    if "eval_options" in spec:
        return DEFAULTS | spec["eval_options"]
    options = dict(DEFAULTS)
    args = list(spec.get("eval_args", []))
    for flag, value in zip(args[::2], args[1::2], strict=False):
        key = flag.removeprefix("--").replace("-", "_")
        if key in options:
            options[key] = value if key == "models_dir" else int(value)
    return options


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from training.cli import EXPECTED_ERRORS
    from training.evaluate import EvalRun, evaluate_runs, write_report_json

    run_dir = Path(argv[0])
    spec = json.loads((run_dir / "job.json").read_text(encoding="utf-8"))
    labels = [label for label, _, _ in spec["evaluate"]]
    runs = [EvalRun(Path(adapter), Path(data)) for _, adapter, data in spec["evaluate"]]
    try:
        reports = evaluate_runs(runs, **options_of(spec))
    except EXPECTED_ERRORS as exc:
        sys.stderr.write(f"evaluation error: {(str(exc).strip().splitlines() or [''])[0]}\n")
        return 2
    for label, report in zip(labels, reports, strict=True):
        write_report_json(report, run_dir / f"eval-{label}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
