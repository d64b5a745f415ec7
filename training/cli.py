"""`teller train` and `teller eval` entry points (app/cli.py calls these lazily).

Bad input ends in one line on stderr and a non-zero exit, never a traceback: the people who
run this are finance teams, and the line must say what to change.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing
from pathlib import Path

from app.cli_common import EXIT_BAD_INPUT, OneLineParser
from app.engine.loader import ModelLoadError
from training.config import Device
from training.config_io import ConfigError, load_config, preset_names
from training.data.loading import DataError
from training.model_build import SetupError
from training.package import PackageError
from training.run_log import describe_peaks

EXPECTED_ERRORS = (ConfigError, DataError, SetupError, ModelLoadError, PackageError)
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _fail(prog: str, exc: BaseException) -> int:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    sys.stderr.write(f"{prog}: error: {reason}\n")
    return EXIT_FAILED if isinstance(exc, PackageError) else EXIT_BAD_INPUT


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)


def _setup_logging(quiet: bool) -> None:
    # bitsandbytes warns at import about optional CPU kernels that training never uses.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,  # `teller` set a quieter default for every other command
    )


def train_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="teller train", description="Fine-tune a LoRA adapter.")
    parser.add_argument("config", help=f"a preset ({', '.join(preset_names())}) or a YAML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config fields, e.g. lora.r=8",
    )
    parser.add_argument("--output", help="run folder (the adapter package lands in OUTPUT/adapter)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or info logs")
    return parser


def train_main(argv: list[str]) -> int:
    """Run `teller train`; returns the process exit code."""
    args = _parse(train_parser(), argv)
    if isinstance(args, int):
        return args
    _setup_logging(args.quiet)
    try:
        config = load_config(args.config, args.overrides)
        if args.output:
            config.output_dir = args.output
        from training.recipe import TrainingRecipe

        result = TrainingRecipe(config, resume=args.resume, progress=not args.quiet).run()
    except EXPECTED_ERRORS as exc:
        return _fail("teller train", exc)
    except KeyboardInterrupt:
        sys.stderr.write("teller train: interrupted before training started; nothing saved\n")
        return EXIT_INTERRUPTED
    metrics = result.manifest.metrics
    lines = [
        f"adapter package: {result.adapter_dir}",
        f"steps: {result.steps}  train examples: {result.manifest.training.examples}  "
        f"eval examples: {result.manifest.training.eval_examples}",
    ]
    if "base_eval_loss" in metrics and "eval_loss" in metrics:
        lines.append(
            f"eval loss: {metrics['base_eval_loss']:.4f} (base) -> "
            f"{metrics['eval_loss']:.4f} (adapter)"
        )
    lines.append(
        f"metrics: {result.run_dir / 'metrics.jsonl'}  plot: {result.run_dir / 'loss.png'}"
    )
    if result.peaks:
        lines.append(describe_peaks(result.peaks))
    if result.check_command:
        lines.append(f"check it: {result.check_command}")
    if result.interrupted:
        lines.append("interrupted: adapter saved; continue with --resume")
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_INTERRUPTED if result.interrupted else 0


def eval_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="teller eval", description="Score an adapter against its base.")
    parser.add_argument("adapter", type=Path, help="adapter package folder")
    parser.add_argument(
        "--data", type=Path, required=True,
        help="held-out Alpaca records (.jsonl) or TAT-QA-format questions (.json)",
    )  # fmt: skip
    parser.add_argument("--base-model", default="", help="override the manifest's base model")
    parser.add_argument("--models-dir", default="", help="where named base models live")
    parser.add_argument("--device", default="auto", choices=typing.get_args(Device))
    parser.add_argument("--limit", type=int, default=0, help="score only the first N records")
    parser.add_argument("--max-checks", type=int, default=50, help="numeric records to generate")
    parser.add_argument("--samples", type=int, default=3, help="sample generations to show")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="worked answers run long")
    parser.add_argument("--json", type=Path, help="also write the report here")
    finance = parser.add_argument_group("TAT-QA-format data (--data FILE.json)")
    finance.add_argument(
        "--types", default="span,multi-span,arithmetic,count",
        help="question types to ask, comma-separated",
    )  # fmt: skip
    finance.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    finance.add_argument(
        "--calculator", choices=("both", "on", "off"), default="both",
        help="score with the calculator, without it, or both",
    )  # fmt: skip
    return parser


def eval_main(argv: list[str]) -> int:
    """Run `teller eval`; returns the process exit code."""
    args = _parse(eval_parser(), argv)
    if isinstance(args, int):
        return args
    _setup_logging(quiet=True)
    if args.data.suffix == ".json":
        return _finance_main(args)
    from training.evaluate import evaluate_adapter, render_report, write_report_json

    try:
        report = evaluate_adapter(
            args.adapter,
            args.data,
            base_model=args.base_model,
            models_dir=args.models_dir,
            device=args.device,
            limit=args.limit,
            max_checks=args.max_checks,
            samples=args.samples,
            max_new_tokens=args.max_new_tokens,
        )
    except EXPECTED_ERRORS as exc:
        return _fail("teller eval", exc)
    except KeyboardInterrupt:
        sys.stderr.write("teller eval: interrupted\n")
        return EXIT_INTERRUPTED
    sys.stdout.write(render_report(report))
    if args.json:
        write_report_json(report, args.json)
        sys.stdout.write(f"report: {args.json}\n")
    return 0


def _finance_main(args: argparse.Namespace) -> int:
    """`teller eval` on TAT-QA-format data: base vs adapter, with and without the calculator."""
    from training.finance_eval import (
        SIDES,
        evaluate_finance,
        render_finance_report,
        write_finance_json,
    )
    from training.tatqa import QUESTION_TYPES, TatqaError, read_questions, sample

    types = tuple(t.strip() for t in args.types.split(",") if t.strip())
    unknown = [t for t in types if t not in QUESTION_TYPES]
    if unknown or not types:
        known = ", ".join(QUESTION_TYPES)
        sys.stderr.write(f"teller eval: error: --types takes {known}; not {', '.join(unknown)}\n")
        return EXIT_BAD_INPUT
    wanted = {"both": (False, True), "on": (True,), "off": (False,)}[args.calculator]
    sides = tuple(s for s in SIDES if s.calculator in wanted)
    try:
        questions = sample(read_questions(args.data), types=types, limit=args.limit, seed=args.seed)
        if not questions:
            raise TatqaError(f"{args.data} has no questions of type {', '.join(types)}")
        report = evaluate_finance(
            args.adapter,
            questions,
            data=str(args.data),
            base_model=args.base_model,
            models_dir=args.models_dir,
            sides=sides,
            max_new_tokens=args.max_new_tokens,
            types=types,
        )
    except (TatqaError, *EXPECTED_ERRORS) as exc:
        return _fail("teller eval", exc)
    except KeyboardInterrupt:
        sys.stderr.write("teller eval: interrupted\n")
        return EXIT_INTERRUPTED
    sys.stdout.write(render_finance_report(report))
    if args.json:
        write_finance_json(report, args.json)
        sys.stdout.write(f"report: {args.json}\n")
    return 0
