"""Small documents of every format, written in the test (no fixtures files to go stale)."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Sequence

Text = tuple[float, float, str]
"""(x, y, text) on a 612 x 792 point page; y counts from the bottom."""


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: Sequence[Sequence[Text]], *, encrypted: bool = False, title: str = "") -> bytes:
    """A PDF with a text layer in Helvetica: each page a list of positioned strings. A page
    given as an empty list has no text at all (what a scan looks like to a text extractor).

    `encrypted` adds a standard security handler whose user password is not empty, so a
    reader without the password cannot open the file.
    """
    objects: list[bytes] = []
    count = len(pages)
    font_id = 3 + 2 * count
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(count))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode())
    for index, page in enumerate(pages):
        content_id = 4 + 2 * index
        objects.append(
            (
                f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R "
                f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>"
            ).encode()
        )
        stream = "".join(f"BT /F1 10 Tf {x} {y} Td ({_escape(t)}) Tj ET\n" for x, y, t in page)
        data = stream.encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    info_id = None
    if title:
        objects.append(f"<< /Title ({_escape(title)}) >>".encode())
        info_id = len(objects)
    encrypt_id = None
    if encrypted:
        objects.append(
            b"<< /Filter /Standard /V 1 /R 2 /P -44 /O <"
            + b"ab" * 32
            + b"> /U <"
            + b"cd" * 32
            + b"> >>"
        )
        encrypt_id = len(objects)
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    trailer = f"<< /Size {len(objects) + 1} /Root 1 0 R"
    if info_id:
        trailer += f" /Info {info_id} 0 R"
    if encrypt_id:
        trailer += f" /Encrypt {encrypt_id} 0 R /ID [<{'11' * 16}> <{'11' * 16}>]"
    out.write(f"trailer\n{trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def statement_page(company: str, year: int) -> list[Text]:
    """An income statement laid out as filings print them: labels left, years in columns."""
    rows = [
        ("Subscription", "$ 16,388", "$ 14,573"),
        ("Product", "532", "555"),
        ("Services and other", "686", "657"),
        ("Total revenue", "17,606", "15,785"),
        ("Net income", "$ 4,756", "$ 4,822"),
    ]
    items: list[Text] = [
        (200, 740, f"{company.upper()} INC."),
        (180, 725, "CONSOLIDATED STATEMENTS OF INCOME"),
        (220, 710, "(In millions)"),
        (380, 690, str(year)),
        (460, 690, str(year - 1)),
    ]
    y = 670
    for label, this_year, last_year in rows:
        items += [(60, y, label), (380, y, this_year), (460, y, last_year)]
        y -= 15
    items.append((60, y - 20, "See accompanying Notes to Consolidated Financial Statements."))
    return items


def prose_page(lines: Sequence[str], heading: str = "") -> list[Text]:
    items: list[Text] = [(60, 740, heading)] if heading else []
    y = 715
    for line in lines:
        items.append((60, y, line))
        y -= 14
    return items


def make_docx(*, heading: str, paragraphs: Sequence[str], table: Sequence[Sequence[str]]) -> bytes:
    import docx

    document = docx.Document()
    document.add_heading(heading, level=1)
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    grid = document.add_table(rows=len(table), cols=len(table[0]))
    for r, row in enumerate(table):
        for c, value in enumerate(row):
            grid.cell(r, c).text = value
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_xlsx(sheets: dict[str, Sequence[Sequence[object]]]) -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for name, rows in sheets.items():
        sheet = workbook.create_sheet(name)
        for row in rows:
            sheet.append(list(row))
    out = io.BytesIO()
    workbook.save(out)
    return out.getvalue()


def rewrite_zip(
    data: bytes, replace: dict[str, bytes], add: dict[str, bytes] | None = None
) -> bytes:
    """The same package with some parts replaced or added (for hostile variants)."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            target.writestr(item.filename, replace.get(item.filename, source.read(item.filename)))
        for name, body in (add or {}).items():
            target.writestr(name, body)
    return out.getvalue()


def padded_xlsx(data_rows: int, empty_rows: int) -> bytes:
    """A workbook whose sheet has a few data rows, then `empty_rows` stored empty rows (what
    a sheet formatted down to row 1,048,576 holds)."""
    base = make_xlsx(
        {"Sheet1": [["Item", "Amount"], *[[f"item {i}", i] for i in range(data_rows)]]}
    )
    source = zipfile.ZipFile(io.BytesIO(base))
    sheet = source.read("xl/worksheets/sheet1.xml").decode()
    start = data_rows + 2
    padding = "".join(f'<row r="{n}"/>' for n in range(start, start + empty_rows))
    sheet = sheet.replace("</sheetData>", padding + "</sheetData>")
    sheet = re.sub(r'<dimension ref="[^"]*"', f'<dimension ref="A1:B{start + empty_rows}"', sheet)
    return rewrite_zip(base, {"xl/worksheets/sheet1.xml": sheet.encode()})
