"""The README and docs/ against the code they describe, so the user docs cannot drift.

A setting added to `Settings`, a training field added to `TrainConfig` or a `teller` command
added to the parser fails here until the docs list it, with the default the code really has.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import typing
from pathlib import Path

import pytest

from app.adapters.cli import build_parser as adapters_parser
from app.cli import build_parser, main
from app.config import Settings
from training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
CODE_SPAN = re.compile(r"`([^`]*)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def section(path: Path, heading: str) -> str:
    """The text under a `## heading` up to the next `## `."""
    text = path.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def table_rows(text: str, first_cell: re.Pattern[str]) -> dict[str, list[str]]:
    """Rows of the Markdown tables in `text` whose first cell is one code span matching
    `first_cell`, keyed by that span's text."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        key = CODE_SPAN.fullmatch(cells[0])
        if key and first_cell.fullmatch(key.group(1)):
            assert key.group(1) not in rows, f"{key.group(1)} is listed twice"
            rows[key.group(1)] = cells[1:]
    return rows


def rendered(value: object) -> str:
    """A default as the docs write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Path):
        return str(value) if value.is_absolute() else f"./{value}"
    return str(value)


def check_default(where: str, cell: str, value: object, document: str) -> None:
    if value is None:
        assert cell.startswith("unset"), f"{where}: default is unset, the docs say {cell!r}"
    elif value in ("", []):
        assert cell.startswith("empty"), f"{where}: default is empty, the docs say {cell!r}"
    elif isinstance(value, str) and len(value) > 60:
        assert value in document, f"{where}: the docs must quote the default {value!r}"
    else:
        spans = CODE_SPAN.findall(cell)
        assert spans, f"{where}: no default given (the code's is {rendered(value)!r})"
        assert spans[0] == rendered(value), (
            f"{where}: the docs say {spans[0]!r}, the code's default is {rendered(value)!r}"
        )


# ---- README: configuration -----------------------------------------------------------------

SETTINGS_ROWS = table_rows(section(README, "Configuration"), re.compile(r"TELLER_[A-Z0-9_]+"))


def test_configuration_table_lists_exactly_the_settings() -> None:
    expected = {f"TELLER_{name.upper()}" for name in Settings.model_fields}
    documented = set(SETTINGS_ROWS)
    assert not expected - documented, f"add to README.md's table: {sorted(expected - documented)}"
    assert not documented - expected, f"not settings any more: {sorted(documented - expected)}"


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_configuration_table_gives_the_real_default_and_choices(name: str) -> None:
    field = Settings.model_fields[name]
    variable = f"TELLER_{name.upper()}"
    default_cell, meaning = SETTINGS_ROWS[variable]
    check_default(variable, default_cell, field.default, README.read_text(encoding="utf-8"))
    if typing.get_origin(field.annotation) is typing.Literal:
        listed = set(CODE_SPAN.findall(meaning))
        missing = [c for c in typing.get_args(field.annotation) if c not in listed]
        assert not missing, f"{variable}: the meaning must name the choices {missing}"


# ---- docs/training.md: training config -----------------------------------------------------


def train_fields(cls: type = TrainConfig, prefix: str = "") -> dict[str, object]:
    """Every leaf field of the training config as `--set` spells it, with its default."""
    fields: dict[str, object] = {}
    for field in dataclasses.fields(cls):
        default = (
            field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        )
        if dataclasses.is_dataclass(default):
            fields.update(train_fields(type(default), f"{prefix}{field.name}."))
        else:
            fields[f"{prefix}{field.name}"] = default
    return fields


def test_training_doc_lists_every_config_field_with_its_default() -> None:
    doc = REPO / "docs" / "training.md"
    rows = table_rows(
        section(doc, "Configuration"), re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?")
    )
    expected = train_fields()
    assert not set(expected) - set(rows), f"add to docs/training.md: {set(expected) - set(rows)}"
    assert not set(rows) - set(expected), f"not config fields: {set(rows) - set(expected)}"
    for key, default in expected.items():
        check_default(key, rows[key][0], default, doc.read_text(encoding="utf-8"))


# ---- README: command line ------------------------------------------------------------------


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, ...]]:
    """Leaf command paths of a parser (`("users", "add")`, `("serve",)`, ...)."""
    paths: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += [(name, *rest) for rest in subcommands(sub) or [()]]
    return paths


def parser_commands() -> set[tuple[str, ...]]:
    commands = {path for path in subcommands(build_parser()) if path != ("adapters",)}
    return commands | {("adapters", *path) for path in subcommands(adapters_parser())}


def documented_commands() -> set[tuple[str, ...]]:
    """The command words of each `teller ...` row, up to the first argument or option."""
    rows = table_rows(section(README, "Command line"), re.compile(r"teller .+"))
    commands = set()
    for usage in rows:
        words = []
        for word in usage.split()[1:]:
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            words.append(word)
        commands.add(tuple(words))
    return commands


def test_command_table_lists_every_command() -> None:
    expected, documented = parser_commands(), documented_commands()
    assert not expected - documented, f"add to README.md: {sorted(expected - documented)}"
    assert not documented - expected, f"no such command: {sorted(documented - expected)}"


@pytest.mark.parametrize("command", sorted(documented_commands()), ids=" ".join)
def test_every_documented_command_answers_help(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main([*command, "--help"])
    except SystemExit as exc:
        code = exc.code
    assert code == 0
    assert f"usage: teller {' '.join(command)}" in " ".join(capsys.readouterr().out.split())


# ---- links ---------------------------------------------------------------------------------


def slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_point_at_files_and_headings(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        assert linked.exists(), f"{path.name}: broken link {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.M)
            assert anchor in {slug(h) for h in headings}, f"{path.name}: no heading #{anchor}"


def committed_bench_scripts() -> set[str]:
    """bench/*.py under version control (a colleague's uncommitted script is not yet due)."""
    if not (REPO / ".git").exists():
        return {f"bench/{path.name}" for path in (REPO / "bench").glob("*.py")}
    listing = subprocess.run(  # noqa: S603
        ["git", "ls-files", "bench/*.py"],  # noqa: S607
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return {line for line in listing.stdout.splitlines() if line.count("/") == 1}


def is_entry_point(script: str) -> bool:
    """A script people run, not a module another benchmark imports."""
    return "__main__" in (REPO / script).read_text(encoding="utf-8")


def test_every_benchmark_script_is_documented() -> None:
    listed = set(table_rows(section(README, "Benchmarks"), re.compile(r"bench/[a-z0-9_]+\.py")))
    scripts = {script for script in committed_bench_scripts() if is_entry_point(script)}
    assert not scripts - listed, f"add to README.md's Benchmarks: {sorted(scripts - listed)}"
    missing = [script for script in listed if not (REPO / script).is_file()]
    assert not missing, f"no such script: {missing}"
