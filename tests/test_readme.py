"""The README, docs/ and bench/README.md against the code they describe, so the docs cannot drift.

A setting added to `Settings` (docs/configuration.md), a training field added to `TrainConfig`
(docs/training.md), a `teller` command or option added to a parser (docs/cli.md) or a bench
script or result file committed (bench/README.md) fails here until the docs list it, with the
default the code really has. The README stays short enough to read in five minutes.
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
CONFIGURATION = REPO / "docs" / "configuration.md"
CLI = REPO / "docs" / "cli.md"
BENCH = REPO / "bench" / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
README_MAX_BYTES = 12 * 1024
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
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
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


# ---- README: short, and a way into every page -------------------------------------------------


def test_readme_stays_short() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, over {README_MAX_BYTES}: move reference material to docs/"
    )


def test_readme_links_every_doc_page() -> None:
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for target in LINK.findall(README.read_text(encoding="utf-8"))
    }
    missing = [path.relative_to(REPO) for path in [*DOCS, BENCH] if path.resolve() not in linked]
    assert not missing, f"link from README.md: {[str(path) for path in missing]}"


def test_headline_figures_name_their_result_file_and_machine() -> None:
    rows = [
        line
        for line in section(README, "Headline figures").splitlines()
        if line.startswith("| ") and not line.startswith(("| what ", "|---"))
    ]
    assert rows, "README.md's Headline figures table is empty"
    for row in rows:
        source = row.strip().strip("|").split("|")[-1]
        files = re.findall(r"`([a-z0-9_.-]+\.json)`", source)
        assert files, f"headline row names no bench/results/*.json: {row}"
        for name in files:
            result = REPO / "bench" / "results" / name
            assert result.is_file(), f"headline row cites a missing result: {name}"
            machine = re.search(r"H100|H200|x86_64|aarch64", source)
            assert machine, f"headline row names no card or CPU: {row}"
            assert machine.group(0) in result.read_text(encoding="utf-8"), (
                f"{name} was not measured on {machine.group(0)}"
            )


# ---- docs/configuration.md: settings -------------------------------------------------------

SETTINGS_ROWS = table_rows(section(CONFIGURATION, "Settings"), re.compile(r"TELLER_[A-Z0-9_]+"))


def test_configuration_table_lists_exactly_the_settings() -> None:
    expected = {f"TELLER_{name.upper()}" for name in Settings.model_fields}
    documented = set(SETTINGS_ROWS)
    missing = sorted(expected - documented)
    assert not missing, f"add to docs/configuration.md: {missing}"
    assert not documented - expected, f"not settings any more: {sorted(documented - expected)}"


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_configuration_table_gives_the_real_default_and_choices(name: str) -> None:
    field = Settings.model_fields[name]
    variable = f"TELLER_{name.upper()}"
    assert variable in SETTINGS_ROWS, f"add {variable} to docs/configuration.md"
    default_cell, meaning = SETTINGS_ROWS[variable]
    check_default(variable, default_cell, field.default, CONFIGURATION.read_text(encoding="utf-8"))
    if typing.get_origin(field.annotation) is typing.Literal:
        listed = set(CODE_SPAN.findall(meaning))
        missing = [c for c in typing.get_args(field.annotation) if c not in listed]
        assert not missing, f"{variable}: the meaning must name the choices {missing}"


# ---- docs/training.md: training config -----------------------------------------------------


def train_fields(cls: type = TrainConfig, prefix: str = "") -> dict[str, tuple[object, object]]:
    """Every leaf field of the training config as `--set` spells it, with its default and type."""
    fields: dict[str, tuple[object, object]] = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        default = (
            field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        )
        if dataclasses.is_dataclass(default):
            fields.update(train_fields(type(default), f"{prefix}{field.name}."))
        else:
            fields[f"{prefix}{field.name}"] = (default, hints[field.name])
    return fields


def test_training_doc_lists_every_config_field_with_its_default() -> None:
    doc = REPO / "docs" / "training.md"
    rows = table_rows(
        section(doc, "Configuration"), re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?")
    )
    expected = train_fields()
    assert not set(expected) - set(rows), f"add to docs/training.md: {set(expected) - set(rows)}"
    assert not set(rows) - set(expected), f"not config fields: {set(rows) - set(expected)}"
    for key, (default, annotation) in expected.items():
        check_default(key, rows[key][0], default, doc.read_text(encoding="utf-8"))
        if typing.get_origin(annotation) is typing.Literal:
            listed = set(CODE_SPAN.findall(" ".join(rows[key])))
            missing = [c for c in typing.get_args(annotation) if c not in listed]
            assert not missing, f"docs/training.md, {key}: name the choices {missing}"


# ---- docs/cli.md: commands and their options -----------------------------------------------


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


def command_rows() -> dict[tuple[str, ...], str]:
    """Each `teller ...` row of docs/cli.md by its command words (up to the first argument or
    option), with the whole row's text."""
    rows = table_rows(section(CLI, "Commands"), re.compile(r"teller .+"))
    commands: dict[tuple[str, ...], str] = {}
    for usage, cells in rows.items():
        words = []
        for word in usage.split()[1:]:
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            words.append(word)
        commands[tuple(words)] = " ".join([usage, *cells])
    return commands


def documented_commands() -> set[tuple[str, ...]]:
    return set(command_rows())


def test_command_table_lists_every_command() -> None:
    expected, documented = parser_commands(), documented_commands()
    assert not expected - documented, f"add to docs/cli.md: {sorted(expected - documented)}"
    assert not documented - expected, f"no such command: {sorted(documented - expected)}"


def help_usage(command: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    """The usage block `teller COMMAND --help` prints, on one line."""
    try:
        code = main([*command, "--help"])
    except SystemExit as exc:
        code = exc.code
    assert code == 0, f"teller {' '.join(command)} --help exited {code}"
    out = " ".join(capsys.readouterr().out.split())
    return out.partition(" positional arguments:")[0].partition(" options:")[0]


@pytest.mark.parametrize("command", sorted(documented_commands()), ids=" ".join)
def test_every_documented_command_answers_help_and_lists_its_options(
    command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    usage = help_usage(command, capsys)
    assert f"usage: teller {' '.join(command)}" in usage
    options = set(re.findall(r"\[?(--[a-z][a-z0-9-]*)", usage)) - {"--help"}
    row = command_rows()[command]
    missing = sorted(o for o in options if not re.search(re.escape(o) + r"(?![a-z0-9-])", row))
    assert not missing, f"docs/cli.md: teller {' '.join(command)} does not mention {missing}"


def test_audit_verify_documents_the_anchor_file() -> None:
    """The off-machine anchor is the one remedy for a rebuilt chain (docs/security.md)."""
    assert "--anchor-file" in command_rows()[("audit", "verify")]


# ---- links ---------------------------------------------------------------------------------


def slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


@pytest.mark.parametrize("path", [README, *DOCS, BENCH], ids=lambda p: str(p.relative_to(REPO)))
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


SOURCE_PATH = re.compile(
    r"((?:app|training|bench|tests|docker|templates|static|docs)/[\w./-]*\w)(?::[\w.]+)?"
)
OPERATOR_FILES = {"docker/teller.env"}  # made by the operator from teller.env.example


@pytest.mark.parametrize("path", [README, *DOCS, BENCH], ids=lambda p: str(p.relative_to(REPO)))
def test_source_paths_named_in_docs_exist(path: Path) -> None:
    """A module moved or renamed leaves no doc pointing at its old place."""
    named = {
        match.group(1)
        for span in CODE_SPAN.findall(path.read_text(encoding="utf-8"))
        if (match := SOURCE_PATH.fullmatch(span))
        and not span.startswith("training/runs/")
        and match.group(1) not in OPERATOR_FILES
    }
    missing = sorted(name for name in named if not (REPO / name).exists())
    assert not missing, f"{path.name} names paths that do not exist: {missing}"


# ---- docs/layout.md: every package of app/ ------------------------------------------------


def test_layout_lists_every_app_package() -> None:
    listed = set(re.findall(r"`(app/[a-z_]+)/`", (REPO / "docs" / "layout.md").read_text("utf-8")))
    packages = {f"app/{path.parent.name}" for path in (REPO / "app").glob("*/__init__.py")} & {
        "/".join(path.split("/")[:2]) for path in committed("app/*/*.py")
    }
    assert not packages - listed, f"add to docs/layout.md: {sorted(packages - listed)}"


# ---- bench/README.md: scripts and result files ---------------------------------------------


def committed(pattern: str) -> set[str]:
    """Files matching `pattern` under version control (a colleague's uncommitted script or
    result is not yet due)."""
    if not (REPO / ".git").exists():
        return {str(path.relative_to(REPO)) for path in REPO.glob(pattern)}
    listing = subprocess.run(  # noqa: S603
        ["git", "ls-files", pattern],  # noqa: S607
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(listing.stdout.splitlines())


def committed_bench_scripts() -> set[str]:
    return {path for path in committed("bench/*.py") if path.count("/") == 1}


def is_entry_point(script: str) -> bool:
    """A script people run, not a module another benchmark imports."""
    return "__main__" in (REPO / script).read_text(encoding="utf-8")


def test_every_benchmark_script_is_documented() -> None:
    listed = set(table_rows(section(BENCH, "Scripts"), re.compile(r"bench/[a-z0-9_]+\.py")))
    scripts = {script for script in committed_bench_scripts() if is_entry_point(script)}
    assert not scripts - listed, f"add to bench/README.md's Scripts: {sorted(scripts - listed)}"
    missing = [script for script in listed if not (REPO / script).is_file()]
    assert not missing, f"no such script: {missing}"


def test_every_result_file_is_described() -> None:
    described = set(re.findall(r"bench/results/[A-Za-z0-9_.-]+", section(BENCH, "Result files")))
    results = committed("bench/results/*")
    assert not results - described, (
        f"describe in bench/README.md's Result files: {sorted(results - described)}"
    )
    missing = [path for path in described if not (REPO / path).is_file()]
    assert not missing, f"no such result file: {missing}"


# ---- code comments: cite bench/results, do not restate ------------------------------------

THROUGHPUT = re.compile(r"\d[\d,.]*\s*(?:tok/s|tokens/s|tokens per second)|MFU\s+\d")


def test_code_cites_results_instead_of_restating_throughput() -> None:
    """A throughput copied into a comment goes stale with the next run; the JSON does not."""
    stale = [
        f"{path.relative_to(REPO)}:{number}"
        for folder in ("app", "training")
        for path in sorted((REPO / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if THROUGHPUT.search(line)
    ]
    assert not stale, f"cite bench/results/*.json instead of the figure: {stale}"
