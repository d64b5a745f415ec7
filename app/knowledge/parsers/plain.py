"""Plain text: paragraphs split at blank lines; and text decoding for every text format."""

from __future__ import annotations

import codecs
import re

from app.knowledge.parsers.model import Block, DocumentRefused, Limits, Parsed, Progress

BLANK_LINES = re.compile(r"\n\s*\n")


def decode_text(data: bytes) -> tuple[str, list[str]]:
    """UTF-8 (with or without BOM) or UTF-16 with a BOM; otherwise Windows-1252 with a note.

    Raises:
        DocumentRefused: for binary content (NUL bytes outside UTF-16).
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16").replace("\r\n", "\n"), []
    if b"\x00" in data[:65536]:
        raise DocumentRefused("the file is binary, not text; check its type and extension")
    try:
        return data.decode("utf-8-sig").replace("\r\n", "\n"), []
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace").replace("\r\n", "\n"), [
            "not UTF-8: read as Windows-1252"
        ]


def parse_text(data: bytes, *, limits: Limits, progress: Progress) -> Parsed:
    text, notes = decode_text(data)
    blocks = [
        Block(kind="text", text=part.strip()) for part in BLANK_LINES.split(text) if part.strip()
    ]
    progress(1, 1)
    return Parsed(title="", pages=1, blocks=blocks, notes=notes)
