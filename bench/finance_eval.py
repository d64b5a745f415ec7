"""Finance evaluation bench: SmolLM2 base vs the smollm2-cpu adapter, without and with the
calculator, on a fixed random subset of TAT-QA dev arithmetic questions.

    python bench/finance_eval.py --train --limit 150 --seed 21 \
        --out bench/results/finance-eval.json

`--train` first trains the adapter with the `smollm2-cpu` preset (into --run-dir); otherwise
--adapter names an adapter package. Each side's answers go through Teller's serving engine and
calculator loop (`training.finance_eval`); scores are TAT-QA's exact match and F1.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import Settings  # noqa: E402
from training.finance_eval import SIDES, evaluate_finance, render_finance_report  # noqa: E402
from training.tatqa import read_questions, sample  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "tatqa" / "tatqa_dataset_dev.json"


def summarise(paths: list[Path], out: Path, note: str) -> int:
    """Build the results file from --progress files (runs cut short keep what they scored)."""
    sides: dict[str, list[dict]] = {}
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            sides.setdefault(row["side"], []).append(row)
    summary = {}
    for name, rows in sides.items():
        summary[name] = {
            "questions": len(rows),
            "exact_match": sum(r["em"] for r in rows) / len(rows),
            "f1": sum(r["f1"] for r in rows) / len(rows),
            "calculations": sum(r["calculations"] for r in rows),
            "calculations_refused": sum(r["refused"] for r in rows),
            "uids": [r["uid"] for r in rows],
        }
    record = {"bench": "finance-eval", "note": note, "sides": summary,
              "answers": [r for rows in sides.values() for r in rows]}  # fmt: skip
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for name, row in summary.items():
        calcs = f"calcs {row['calculations']} ({row['calculations_refused']} refused)"
        print(f"{name:20} EM {row['exact_match']:.1%}  F1 {row['f1']:.1%}  "
              f"n={row['questions']}  {calcs}")  # fmt: skip
    return 0


def _device_name(device: str) -> str:
    """The GPU's name, or the CPU's model: what the seconds in the report ran on."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--adapter", type=Path, help="adapter package (else --train)")
    parser.add_argument("--train", action="store_true", help="train the smollm2-cpu preset first")
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/finance-eval-run"))  # noqa: S108
    parser.add_argument("--train-set", nargs="*", default=[], help="preset overrides")
    parser.add_argument("--models-dir", default=str(REPO / "models"))
    parser.add_argument("--base-model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="the served model's (float32: exact)")
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--sides", default="base,base+calculator,adapter,adapter+calculator")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/finance-eval.json")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="questions at once on the batch scheduler (1: sequential engine)",
    )
    parser.add_argument("--progress", type=Path, help="append each answer here as it is scored")
    parser.add_argument("--summarise", type=Path, nargs="*", help="progress files to summarise")
    parser.add_argument("--note", default="", help="what the summarised run was")
    args = parser.parse_args()
    if args.summarise:
        return summarise(args.summarise, args.out, args.note)

    record: dict = {
        "bench": "finance-eval",
        "data": args.data.name,
        "question_type": "arithmetic",
        "limit": args.limit,
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
        "concurrency": args.concurrency,
        "device": args.device,
        "device_name": _device_name(args.device),
        "dtype": args.dtype,
        "machine": platform.machine(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
    }
    adapter = args.adapter
    if args.train:
        started = time.monotonic()
        overrides = [f"models_dir={args.models_dir}", *args.train_set]
        subprocess.run(
            [sys.executable, "-m", "training", "smollm2-cpu", "--output", str(args.run_dir),
             "--quiet", "--set", *overrides],
            cwd=REPO, check=True,
        )  # fmt: skip
        record["train_seconds"] = round(time.monotonic() - started, 1)
        record["train_overrides"] = overrides
        adapter = args.run_dir / "adapter"
    questions = sample(read_questions(args.data), types=("arithmetic",), limit=args.limit,
                       seed=args.seed)  # fmt: skip
    wanted = args.sides.split(",")
    by_name = {side.name: side for side in SIDES}
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        parser.error(f"--sides takes {', '.join(by_name)}; not {', '.join(unknown)}")
    sides = tuple(by_name[name] for name in wanted)  # in the order given: a run cut short
    # keeps the sides that matter most
    started = time.monotonic()
    report = evaluate_finance(
        adapter, questions, data=args.data.name, base_model=args.base_model,
        models_dir=args.models_dir, sides=sides, max_new_tokens=args.max_new_tokens,
        types=("arithmetic",), device=args.device,
        system=Settings.model_fields["system_prompt"].default,  # what the server sends
        progress=args.progress, concurrency=args.concurrency, dtype=args.dtype,
    )  # fmt: skip
    record["eval_seconds"] = round(time.monotonic() - started, 1)
    if adapter is not None and (adapter / "teller.json").exists():
        record["adapter_manifest"] = json.loads((adapter / "teller.json").read_text())
    record["report"] = report.to_dict(answers=len(questions))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(render_finance_report(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
