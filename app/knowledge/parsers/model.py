"""What every parser returns: an ordered list of blocks with their place in the document."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Progress = Callable[[int, int], None]
"""`progress(done, total)`: pages (PDF), sheets (XLSX) or 1 for one-piece formats."""


class DocumentRefused(Exception):
    """A document that cannot be indexed; the message is shown next to it as it stands."""


class Interrupted(Exception):
    """Raised from a progress callback: the worker is stopping; the document is read again
    at the next start. Parsers let it through untouched."""


@dataclass(frozen=True)
class Limits:
    """Bounds a hostile or broken file runs into (from Settings, see app/config.py)."""

    max_file_bytes: int = 50 << 20
    max_expanded_bytes: int = 200 << 20
    """A DOCX/XLSX (zip) that would unpack to more is refused as a zip bomb."""
    max_sheet_rows: int = 100_000
    """Rows read per sheet; rows past it are left out and noted."""
    max_empty_rows: int = 1_000
    """A run of this many empty rows ends a sheet (a spreadsheet padded with a million)."""
    max_pages: int = 5_000


@dataclass
class Block:
    """A heading, a paragraph or a table, in reading order."""

    kind: Literal["heading", "text", "table"]
    text: str = ""
    page: int | None = None
    """1-based page (PDF); None where the format has none."""
    location: str = ""
    """A place finer than the page: a sheet and its rows."""
    level: int = 1
    """Heading depth (1 = top)."""
    rows: list[list[str]] = field(default_factory=list)
    """Table cells, header rows first (`header_rows` of them)."""
    header_rows: int = 1


@dataclass
class Parsed:
    title: str
    pages: int
    blocks: list[Block]
    notes: list[str] = field(default_factory=list)
    """What was skipped or bounded, in words for the document's list."""


def markdown_table(rows: list[list[str]], header_rows: int = 1) -> str:
    """Rows as a Markdown table; extra header rows fold into the first, cells lose `|` and
    line breaks so a cell can never end the table early."""
    if not rows:
        return ""
    width = max(len(row) for row in rows)

    def clean(cell: str) -> str:
        return " ".join(str(cell).split()).replace("|", "\\|")

    padded = [[clean(c) for c in row] + [""] * (width - len(row)) for row in rows]
    header_rows = max(1, min(header_rows, len(padded)))
    header = [" ".join(filter(None, column)) for column in zip(*padded[:header_rows], strict=True)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join(row) + " |" for row in padded[header_rows:]]
    return "\n".join(lines)
