"""PDF text layers with pypdfium2: pages, headings, and tables rebuilt as rows and columns.

pdfium splits a page's text into segments at font changes and wide gaps ("text rects"), which
is exactly where the cells of a financial statement are. Lines are rebuilt from segments; a
run of lines whose later segments are numbers is a table, its columns the merged x-ranges of
those numbers. Scanned pages have no text layer: a document with none at all is refused
(OCR is not supported), one with a few such pages gets a note.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pypdfium2 as pdfium

from app.knowledge.parsers.model import Block, DocumentRefused, Limits, Parsed, Progress

NUMBER = re.compile(r"^\(?[$€£¥]?\s*\(?[-–—]?\s*[\d][\d,]*(\.\d+)?\s*%?\)?%?$|^[-–—]+$|^\$$")
CURRENCY = {"$", "€", "£", "¥"}
CLOSERS = {")", "%", ")%", "%)"}
WORD_GAP = 2.0
COLUMN_GAP = 6.0
"""Points of white space that separate table columns (a word space is 2-3)."""
YEAR = re.compile(r"^(19|20)\d\d$")
ITEM = re.compile(r"^(PART\s+[IVX]+\b|ITEM\s+\d+[A-Z]?\.)", re.I)
PAGE_FURNITURE = re.compile(r"^(table of contents|\d{1,4}|page \d+( of \d+)?)$", re.I)


@dataclass
class Segment:
    x0: float
    x1: float
    top: float
    bottom: float
    text: str
    spaced: bool = True
    """The raw text ended or began with white space (a word break at the segment's edge)."""

    @property
    def numeric(self) -> bool:
        return bool(NUMBER.match(self.text))


def _lines(textpage: pdfium.PdfTextPage) -> list[list[Segment]]:
    """Segments grouped into lines (top to bottom), each line left to right."""
    segments = []
    for index in range(textpage.count_rects()):
        left, bottom, right, top = textpage.get_rect(index)
        raw = textpage.get_text_bounded(left, bottom, right, top)
        text = " ".join(raw.split())
        if text:
            spaced = raw[:1].isspace() or raw[-1:].isspace()
            segments.append(Segment(left, right, top, bottom, text, spaced))
    segments.sort(key=lambda s: (-s.top, s.x0))
    lines: list[list[Segment]] = []
    for segment in segments:
        middle = (segment.top + segment.bottom) / 2
        if lines:
            last = lines[-1][0]
            if last.bottom - 1 <= middle <= last.top + 1:
                lines[-1].append(segment)
                continue
        lines.append([segment])
    for line in lines:
        line.sort(key=lambda s: s.x0)
    return lines


def _is_row(line: list[Segment]) -> bool:
    """Numbers standing apart from what precedes them: a table row, not a sentence that
    changes font around a figure ("approximately **566,000** employees")."""
    return any(
        segment.numeric and segment.x0 - before.x1 >= COLUMN_GAP
        for before, segment in zip(line, line[1:], strict=False)
    )


def _columns(rows: list[list[Segment]]) -> list[tuple[float, float]]:
    """x-ranges of the number columns: overlapping number segments merged."""
    spans = sorted((s.x0, s.x1) for line in rows for s in line[1:] if s.numeric)
    merged: list[list[float]] = []
    for x0, x1 in spans:
        if merged and x0 <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], x1)
        else:
            merged.append([x0, x1])
    return [(a, b) for a, b in merged]


def _cells(line: list[Segment], columns: list[tuple[float, float]]) -> list[str]:
    """One row: the label (everything left of the first column), then a cell per column."""
    cells = [""] * (len(columns) + 1)
    for segment in line:
        overlaps = [min(segment.x1, b) - max(segment.x0, a) for a, b in columns]
        best = max(range(len(columns)), key=lambda i: overlaps[i]) if columns else -1
        if best >= 0 and overlaps[best] > 0:
            slot = best + 1
        elif columns and segment.x0 >= columns[0][0]:
            centre = (segment.x0 + segment.x1) / 2
            slot = 1 + min(range(len(columns)), key=lambda i: abs(sum(columns[i]) / 2 - centre))
        else:
            slot = 0
        cells[slot] = f"{cells[slot]} {segment.text}".strip()
    return [cell.replace("$ ", "$").replace(" )", ")").strip() for cell in cells]


def _table(lines: list[list[Segment]], start: int) -> tuple[Block | None, int, int]:
    """The table whose first number row is `lines[start]`: (block, first line, end line)."""
    end = start
    rows = [lines[start]]
    index = start + 1
    while index < len(lines):
        line = lines[index]
        if _is_row(line):
            rows.append(line)
            end = index
        elif len(line) == 1 and len(line[0].text) <= 90 and index + 1 < len(lines):
            pass  # a row label on its own ("Revenue:"): part of the table if rows follow
        else:
            break
        index += 1
    if len(rows) < 2:
        return None, start, start
    columns = _columns(rows)
    # Header lines above: their segments all sit over the number columns.
    first = start
    while first > 0:
        above = lines[first - 1]
        if all(s.x0 >= columns[0][0] - 30 for s in above) and not any(
            ITEM.match(s.text) for s in above
        ):
            first -= 1
        else:
            break
    header = [_cells(line, columns) for line in lines[first:start]]
    body = [_cells(line, columns) for line in lines[start : end + 1]]
    while len(body) > 1 and not body[0][0] and all(YEAR.match(c) for c in body[0][1:] if c):
        header.append(body.pop(0))  # "2022 2021 2020" under the dates: a header line
    if header:
        merged = [" ".join(filter(None, column)) for column in zip(*header, strict=True)]
        table_rows = [merged, *body]
    else:
        table_rows = [[""] * (len(columns) + 1), *body]
    return Block(kind="table", rows=_tidy(table_rows), header_rows=1), first, end


def _tidy(rows: list[list[str]]) -> list[list[str]]:
    """Fold stray `$` cells into the number after them and `)`/`%` into the one before, then
    drop columns left empty: `| $ | 596 | ... (459 | ) |` becomes `| $596 | ... (459) |`."""
    for row in rows[1:]:
        for index, cell in enumerate(row):
            if index and cell in CURRENCY:
                after = next((j for j in range(index + 1, len(row)) if row[j]), None)
                if after is not None:
                    row[after], row[index] = cell + row[after], ""
            elif index and cell in CLOSERS:
                before = next((j for j in range(index - 1, 0, -1) if row[j]), None)
                if before is not None:
                    row[before], row[index] = row[before] + cell, ""
    width = max(len(row) for row in rows)
    keep = [0] + [j for j in range(1, width) if any(j < len(r) and r[j] for r in rows[1:])]
    return [[row[j] if j < len(row) else "" for j in keep] for row in rows]


def _join(line: list[Segment]) -> str:
    """A line's text: segments that touch are one word ("34" + ".6 %"), others get a space."""
    text = line[0].text
    for before, segment in zip(line, line[1:], strict=False):
        joined = segment.x0 - before.x1 < WORD_GAP and not (before.spaced or segment.spaced)
        text += ("" if joined else " ") + segment.text
    return text


def _page_blocks(lines: list[list[Segment]], page: int) -> list[Block]:
    while lines and PAGE_FURNITURE.match(" ".join(s.text for s in lines[-1])):
        lines = lines[:-1]
    while lines and PAGE_FURNITURE.match(" ".join(s.text for s in lines[0])):
        lines = lines[1:]
    blocks: list[Block] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            blocks.append(Block(kind="text", text="\n".join(paragraph), page=page))
            paragraph.clear()

    index = 0
    while index < len(lines):
        line = lines[index]
        text = _join(line)
        if _is_row(line):
            table, first, end = _table(lines, index)
            if table is not None:
                # Header lines were already taken as text: give them back to the table.
                keep = len(paragraph) - (index - first)
                del paragraph[max(keep, 0) :]
                flush()
                table.page = page
                blocks.append(table)
                index = end + 1
                continue
        if ITEM.match(text) and len(text) <= 120:
            flush()
            blocks.append(Block(kind="heading", text=text, page=page, level=1))
        elif _looks_like_title(text):
            flush()
            blocks.append(Block(kind="heading", text=text, page=page, level=2))
        else:
            paragraph.append(text)
        index += 1
    flush()
    return blocks


def _looks_like_title(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return 4 <= len(letters) and len(text) <= 90 and text.isupper() and not NUMBER.match(text)


def parse_pdf(data: bytes, *, limits: Limits, progress: Progress) -> Parsed:
    """Blocks of every page (1-based page numbers); refuses encrypted and image-only PDFs."""
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise DocumentRefused(
                "the PDF is encrypted (password-protected): remove the protection and upload "
                "it again"
            ) from None
        raise DocumentRefused(f"not a readable PDF ({exc})") from None
    try:
        pages = len(document)
        if pages == 0:
            raise DocumentRefused("the PDF has no pages")
        if pages > limits.max_pages:
            raise DocumentRefused(
                f"the PDF has {pages:,} pages; the limit is {limits.max_pages:,} "
                "(TELLER_KNOWLEDGE_MAX_PAGES)"
            )
        title = (document.get_metadata_value("Title") or "").strip()
        blocks: list[Block] = []
        empty_pages: list[int] = []
        for number in range(1, pages + 1):
            page = document[number - 1]
            textpage = page.get_textpage()
            try:
                page_blocks = _page_blocks(_lines(textpage), number)
            finally:
                textpage.close()
                page.close()
            if not page_blocks:
                empty_pages.append(number)
            blocks += page_blocks
            progress(number, pages)
    finally:
        document.close()
    if not blocks:
        raise DocumentRefused("no text layer; OCR is not supported (is it a scanned document?)")
    notes = []
    if empty_pages:
        shown = ", ".join(str(p) for p in empty_pages[:12]) + (
            ", ..." if len(empty_pages) > 12 else ""
        )
        notes.append(f"{len(empty_pages)} page(s) without text (scanned? not indexed): {shown}")
    return Parsed(title=title, pages=pages, blocks=blocks, notes=notes)
