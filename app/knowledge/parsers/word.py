"""DOCX with python-docx: headings from paragraph styles, tables as rows and columns."""

from __future__ import annotations

import io

import docx
from docx.table import Table
from docx.text.paragraph import Paragraph

from app.knowledge.parsers.containers import open_package
from app.knowledge.parsers.model import Block, Limits, Parsed, Progress


def _heading_level(paragraph: Paragraph) -> int | None:
    style = (paragraph.style.name if paragraph.style is not None else "") or ""
    if style == "Title":
        return 1
    if style.startswith("Heading"):
        digits = style.removeprefix("Heading").strip()
        return int(digits) if digits.isdigit() else 1
    return None


def _table_rows(table: Table) -> list[list[str]]:
    rows = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if cell._tc is previous:  # a merged cell repeats; keep it once  # noqa: SLF001
                cells.append("")
                continue
            previous = cell._tc  # noqa: SLF001
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            rows.append(cells)
    return rows


def parse_docx(data: bytes, *, limits: Limits, progress: Progress) -> Parsed:
    open_package(data, limits=limits, kind="DOCX").close()
    document = docx.Document(io.BytesIO(data))
    blocks: list[Block] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            blocks.append(Block(kind="text", text="\n".join(paragraph)))
            paragraph.clear()

    for element in document.element.body.iterchildren():
        tag = element.tag.rsplit("}", 1)[-1]
        if tag == "p":
            item = Paragraph(element, document)
            text = " ".join(item.text.split())
            if not text:
                flush()
                continue
            level = _heading_level(item)
            if level is not None:
                flush()
                blocks.append(Block(kind="heading", text=text, level=level))
            else:
                paragraph.append(text)
        elif tag == "tbl":
            flush()
            rows = _table_rows(Table(element, document))
            if rows:
                blocks.append(Block(kind="table", rows=rows, header_rows=1))
    flush()
    progress(1, 1)
    title = (document.core_properties.title or "").strip()
    return Parsed(title=title, pages=1, blocks=blocks)
