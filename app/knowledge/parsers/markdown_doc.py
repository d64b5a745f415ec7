"""Markdown: ATX headings make sections, pipe tables stay tables, fenced code stays text."""

from __future__ import annotations

import re

from app.knowledge.parsers.model import Block, Limits, Parsed, Progress
from app.knowledge.parsers.plain import decode_text

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)]


def parse_markdown(data: bytes, *, limits: Limits, progress: Progress) -> Parsed:
    text, notes = decode_text(data)
    lines = text.split("\n")
    blocks: list[Block] = []
    paragraph: list[str] = []
    title = ""

    def flush() -> None:
        if any(line.strip() for line in paragraph):
            blocks.append(Block(kind="text", text="\n".join(paragraph).strip()))
        paragraph.clear()

    index, in_fence = 0, False
    while index < len(lines):
        line = lines[index]
        if FENCE.match(line):
            in_fence = not in_fence
            paragraph.append(line)
        elif in_fence:
            paragraph.append(line)
        elif match := HEADING.match(line):
            flush()
            level = len(match.group(1))
            title = title or (match.group(2) if level == 1 else "")
            blocks.append(Block(kind="heading", text=match.group(2), level=level))
        elif "|" in line and index + 1 < len(lines) and RULE.match(lines[index + 1]):
            flush()
            rows = [_cells(line)]
            index += 2
            while index < len(lines) and "|" in lines[index] and lines[index].strip():
                rows.append(_cells(lines[index]))
                index += 1
            blocks.append(Block(kind="table", rows=rows, header_rows=1))
            continue
        elif not line.strip():
            flush()
        else:
            paragraph.append(line)
        index += 1
    flush()
    progress(1, 1)
    return Parsed(title=title, pages=1, blocks=blocks, notes=notes)
