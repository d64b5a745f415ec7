"""Passages cut for filings: never across a page, never through a table.

A passage carries the document title, the section it sits in (the heading path) and its page
or sheet rows, so a citation can say where it is and a search for "income statement" finds
the statement under its heading. Paragraphs fill a passage up to `target` characters and
split at sentence ends when one alone is longer. A table goes whole into one passage, with
the short text just before it (its caption: "(In millions, except per share data)"); only a
table larger than `4 x target` is cut, between rows, with its header row repeated on every
part, so each part still reads as a table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.knowledge.parsers.model import Block, Parsed, markdown_table

SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


@dataclass
class Draft:
    page: int | None
    location: str
    section: str
    text: str
    has_table: bool = False


def _where(block: Block) -> str:
    if block.location:
        return block.location
    return f"page {block.page}" if block.page is not None else ""


def _split_long(text: str, target: int) -> list[str]:
    """A paragraph longer than `target` in sentence-aligned parts (words as a last resort)."""
    parts: list[str] = []
    current = ""
    for sentence in SENTENCE_END.split(text):
        while len(sentence) > target:
            cut = sentence.rfind(" ", 0, target)
            cut = cut if cut > target // 2 else target
            parts.append((current + " " + sentence[:cut]).strip())
            current, sentence = "", sentence[cut:].strip()
        if current and len(current) + len(sentence) + 1 > target:
            parts.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        parts.append(current)
    return parts


def _table_parts(block: Block, limit: int) -> list[str]:
    """The table as one Markdown table, or row groups each under the header rows."""
    whole = markdown_table(block.rows, block.header_rows)
    if len(whole) <= limit:
        return [whole]
    header, body = block.rows[: block.header_rows], block.rows[block.header_rows :]
    parts: list[str] = []
    group: list[list[str]] = []
    for row in body:
        group.append(row)
        if len(markdown_table(header + group, block.header_rows)) > limit and len(group) > 1:
            parts.append(markdown_table(header + group[:-1], block.header_rows))
            group = [row]
    if group:
        parts.append(markdown_table(header + group, block.header_rows))
    return parts


def chunk(parsed: Parsed, *, target: int = 1200) -> list[Draft]:
    """The passages of a parsed document, in reading order."""
    drafts: list[Draft] = []
    headings: list[tuple[int, str]] = []
    pieces: list[str] = []
    size = 0
    place: tuple[int | None, str] | None = None
    has_table = False

    def section() -> str:
        return " › ".join(text for _, text in headings)[:255]

    def flush() -> None:
        nonlocal size, has_table
        text = "\n\n".join(pieces).strip()
        if text and place is not None:
            drafts.append(Draft(place[0], place[1], section(), text, has_table))
        pieces.clear()
        size, has_table = 0, False

    for block in parsed.blocks:
        where = (block.page, _where(block))
        if place is not None and where != place:
            flush()
        place = where
        if block.kind == "heading":
            flush()
            while headings and headings[-1][0] >= block.level:
                headings.pop()
            headings.append((block.level, block.text[:120]))
            continue
        if block.kind == "table":
            if pieces and size > target // 2:
                flush()  # too much text before it to be its caption
            parts = _table_parts(block, 4 * target - size)
            for index, part in enumerate(parts):
                if index:
                    flush()
                pieces.append(part)
                size += len(part)
                has_table = True
            flush()
            continue
        for part in _split_long(block.text, target) if len(block.text) > target else [block.text]:
            if size and size + len(part) > target:
                flush()
            pieces.append(part)
            size += len(part)
    flush()
    return drafts
