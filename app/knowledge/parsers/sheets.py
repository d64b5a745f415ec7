"""XLSX (openpyxl, read-only, cached values) and CSV: each sheet a table in row groups.

Every group repeats the sheet's header row and names its rows (`Sheet1 rows 2-31`), so a
passage is a table a reader can check against the file. Reading is bounded: at most
`max_sheet_rows` rows per sheet, and a run of `max_empty_rows` empty rows ends the sheet (a
file padded with a million empty rows costs a thousand row reads, not a million).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import date, datetime

from app.knowledge.parsers.containers import open_package
from app.knowledge.parsers.model import Block, DocumentRefused, Limits, Parsed, Progress
from app.knowledge.parsers.plain import decode_text

ROWS_PER_BLOCK = 30


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{int(value)}"
    if isinstance(value, datetime | date):
        return value.isoformat()[:10] if isinstance(value, datetime) else value.isoformat()
    return " ".join(str(value).split())


def _sheet_blocks(
    name: str, rows: Iterable[Iterable[object]], limits: Limits, notes: list[str]
) -> list[Block]:
    """Row groups of one sheet; records in `notes` what the bounds left out."""
    header: list[str] | None = None
    header_row = 0
    group: list[tuple[int, list[str]]] = []
    blocks: list[Block] = []
    empty_run = 0

    def flush() -> None:
        if group and header is not None:
            first, last = group[0][0], group[-1][0]
            width = max(len(header), *(len(cells) for _, cells in group))
            blocks.append(
                Block(
                    kind="table",
                    rows=[header + [""] * (width - len(header))] + [c for _, c in group],
                    location=f"{name} rows {first}-{last}"
                    if first != last
                    else f"{name} row {first}",
                )
            )
        group.clear()

    number = 0
    for number, raw in enumerate(rows, start=1):
        if number > limits.max_sheet_rows:
            notes.append(
                f"{name}: only the first {limits.max_sheet_rows:,} rows were read "
                "(TELLER_KNOWLEDGE_MAX_SHEET_ROWS)"
            )
            break
        cells = [_cell(v) for v in raw]
        while cells and not cells[-1]:
            cells.pop()
        if not cells:
            empty_run += 1
            if empty_run >= limits.max_empty_rows:
                notes.append(
                    f"{name}: reading stopped at row {number:,} after {empty_run:,} empty rows"
                )
                break
            continue
        empty_run = 0
        if header is None:
            header, header_row = cells, number
            continue
        group.append((number, cells))
        if len(group) >= ROWS_PER_BLOCK:
            flush()
    flush()
    if header is not None and not blocks:  # a sheet that is only a header row
        blocks.append(Block(kind="table", rows=[header], location=f"{name} row {header_row}"))
    return blocks


def parse_xlsx(data: bytes, *, limits: Limits, progress: Progress) -> Parsed:
    open_package(data, limits=limits, kind="XLSX").close()
    import openpyxl  # noqa: PLC0415 - imported with the first spreadsheet

    try:
        workbook = openpyxl.load_workbook(
            io.BytesIO(data), read_only=True, data_only=True, keep_links=False
        )
    except Exception as exc:  # noqa: BLE001 - openpyxl raises many kinds on damaged files
        raise DocumentRefused(f"not a readable XLSX workbook ({type(exc).__name__})") from None
    blocks: list[Block] = []
    notes: list[str] = []
    try:
        sheets = workbook.worksheets
        for index, sheet in enumerate(sheets, start=1):
            title = str(sheet.title)
            if getattr(sheet, "sheet_state", "visible") != "visible":
                notes.append(f"{title}: hidden sheet, not indexed")
            else:
                blocks.append(Block(kind="heading", text=title, level=1, location=title))
                blocks += _sheet_blocks(title, _rows(sheet), limits, notes)
            progress(index, len(sheets))
    finally:
        workbook.close()
    return Parsed(title="", pages=len(sheets), blocks=blocks, notes=notes)


def _rows(sheet) -> Iterator[tuple[object, ...]]:  # noqa: ANN001
    # values_only rows as stored; openpyxl does not pad past the last stored row.
    yield from sheet.iter_rows(values_only=True)


def parse_csv(data: bytes, *, limits: Limits, progress: Progress) -> Parsed:
    text, notes = decode_text(data)
    sample = text[:8192]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, ",;\t|")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    try:
        blocks = _sheet_blocks("table", reader, limits, notes)
    except csv.Error as exc:
        raise DocumentRefused(f"not a readable CSV file ({exc})") from None
    progress(1, 1)
    return Parsed(title="", pages=1, blocks=blocks, notes=notes)
