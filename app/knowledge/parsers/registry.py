"""Which parser reads a file: by its name, confirmed by its first bytes.

A name that says one format over content of another is refused with both named, so a
mislabelled upload never reaches a parser built for something else.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import PurePath

from app.knowledge.parsers.model import (
    DocumentRefused,
    Interrupted,
    Limits,
    Parsed,
    Progress,
)

FORMATS = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
    ".csv": "csv",
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
}
LABELS = {
    "pdf": "PDF",
    "docx": "Word (DOCX)",
    "xlsx": "Excel (XLSX)",
    "csv": "CSV",
    "html": "HTML",
    "markdown": "Markdown",
    "text": "plain text",
}
OLD_OFFICE = {".doc": "DOCX", ".xls": "XLSX", ".ppt": "PDF"}
TEXT_FORMATS = {"csv", "html", "markdown", "text"}
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
SUPPORTED = "PDF, DOCX, XLSX, CSV, HTML, Markdown and plain text"


def format_of_name(filename: str) -> str:
    """The format a file name promises.

    Raises:
        DocumentRefused: an extension Teller does not read.
    """
    suffix = PurePath(filename).suffix.lower()
    if suffix in FORMATS:
        return FORMATS[suffix]
    if suffix in OLD_OFFICE:
        raise DocumentRefused(
            f"{suffix} is the old binary Office format: save it as {OLD_OFFICE[suffix]} first"
        )
    shown = suffix or "(no extension)"
    raise DocumentRefused(f"unsupported file type {shown}; Teller reads {SUPPORTED}")


def format_of_content(data: bytes) -> str | None:
    """What the bytes are, where they say so: pdf, docx, xlsx, `ole`, `zip`, or None (text)."""
    if b"%PDF-" in data[:1024]:
        return "pdf"
    if data.startswith(OLE_MAGIC):
        return "ole"
    if data.startswith(b"PK\x03\x04"):
        try:
            names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
        except (zipfile.BadZipFile, OSError, ValueError):
            return "zip"
        if "word/document.xml" in names:
            return "docx"
        if "xl/workbook.xml" in names:
            return "xlsx"
        return "zip"
    return None


def readable_size(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB" if size >= 2**20 else f"{size:,} bytes"


def check_upload(filename: str, data: bytes, *, limits: Limits, size: int | None = None) -> str:
    """The document's format, or the reason it is refused before it is stored.

    Raises:
        DocumentRefused: empty, too large, an unsupported type, or content that is not what
            the name says.

    Args:
        size: the file's full size when `data` holds only its first bytes (an upload read
            no further than the limit).
    """
    if not data:
        raise DocumentRefused("the file is empty (0 bytes)")
    size = max(size or 0, len(data))
    if size > limits.max_file_bytes:
        raise DocumentRefused(
            f"the file is {readable_size(size)}; the limit is "
            f"{readable_size(limits.max_file_bytes)} (TELLER_KNOWLEDGE_MAX_FILE_BYTES)"
        )
    named = format_of_name(filename)
    found = format_of_content(data)
    if found == "ole":
        raise DocumentRefused(
            "the file is an encrypted (password-protected) Office document or an old binary "
            ".doc/.xls: remove the protection or save it as DOCX/XLSX"
        )
    if found == "zip" and named in ("docx", "xlsx"):
        raise DocumentRefused(f"the file is a zip archive but not a {LABELS[named]} document")
    if named in TEXT_FORMATS:
        if found is not None:
            raise DocumentRefused(_mismatch(filename, found))
    elif found != named:
        raise DocumentRefused(_mismatch(filename, found))
    return named


def _mismatch(filename: str, found: str | None) -> str:
    suffix = PurePath(filename).suffix.lower()
    content = LABELS.get(found or "", "zip archive" if found == "zip" else "text or unknown")
    return (
        f"the name ends in {suffix} but the content is {content}: rename the file to match "
        "its content, or upload the right file"
    )


def parser_for(kind: str) -> Callable[..., Parsed]:
    """The parse function of a format (imported on first use: PDF and Office libraries)."""
    if kind == "pdf":
        from app.knowledge.parsers.pdf import parse_pdf

        return parse_pdf
    if kind == "docx":
        from app.knowledge.parsers.word import parse_docx

        return parse_docx
    if kind == "xlsx":
        from app.knowledge.parsers.sheets import parse_xlsx

        return parse_xlsx
    if kind == "csv":
        from app.knowledge.parsers.sheets import parse_csv

        return parse_csv
    if kind == "html":
        from app.knowledge.parsers.html_page import parse_html

        return parse_html
    if kind == "markdown":
        from app.knowledge.parsers.markdown_doc import parse_markdown

        return parse_markdown
    from app.knowledge.parsers.plain import parse_text

    return parse_text


def parse(kind: str, data: bytes, *, limits: Limits, progress: Progress) -> Parsed:
    """Parse `data` as `kind`; any failure of the library becomes a per-document reason.

    Raises:
        DocumentRefused: the reason the document cannot be indexed.
    """
    try:
        parsed = parser_for(kind)(data, limits=limits, progress=progress)
    except (DocumentRefused, Interrupted):
        raise
    except MemoryError:
        raise DocumentRefused("the document needs more memory than the server has") from None
    except Exception as exc:  # noqa: BLE001 - a broken file must not stop the worker
        raise DocumentRefused(
            f"could not read the {LABELS[kind]} file ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    if not any(block.text.strip() or block.rows for block in parsed.blocks):
        raise DocumentRefused("no text found in the document")
    return parsed
