"""HTML through the standard library's tokenizer: text, headings and tables; no scripts.

Nothing from a page is kept as markup: script, style, template, iframe, object and SVG
content is dropped whole, every other tag only shapes the text, and the text is escaped
wherever it is shown.
"""

from __future__ import annotations

from html.parser import HTMLParser

from app.knowledge.parsers.model import Block, Limits, Parsed, Progress
from app.knowledge.parsers.plain import decode_text

DROPPED = {"script", "style", "noscript", "template", "iframe", "object", "embed", "svg"}
BREAKS = {
    "p",
    "div",
    "br",
    "li",
    "section",
    "article",
    "header",
    "footer",
    "blockquote",
    "pre",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "hr",
    "main",
    "nav",
    "aside",
    "form",
}
HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.title = ""
        self.dropped = 0
        self.in_title = False
        self.text: list[str] = []
        self.heading: int | None = None
        self.table: list[list[str]] | None = None
        self.row: list[str] | None = None
        self.cell: list[str] | None = None
        self.tables_depth = 0
        self.in_head = False

    def _flush_text(self) -> None:
        text = " ".join("".join(self.text).split())
        self.text.clear()
        if not text:
            return
        if self.heading is not None:
            self.blocks.append(Block(kind="heading", text=text, level=self.heading))
        elif self.blocks and self.blocks[-1].kind == "text" and len(self.blocks[-1].text) < 400:
            self.blocks[-1].text += "\n" + text
        else:
            self.blocks.append(Block(kind="text", text=text))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        if tag == "head":
            self.in_head = True
        elif tag == "body":
            self.in_head = False
        if tag in DROPPED:
            self.dropped += 1
            return
        if self.dropped:
            return
        if tag == "table":
            self.tables_depth += 1
            if self.tables_depth == 1:
                self._flush_text()
                self.table = []
        elif tag == "tr" and self.table is not None:
            self.row = []
        elif tag in ("td", "th") and self.row is not None:
            self.cell = []
        elif tag in HEADINGS and self.table is None:
            self._flush_text()
            self.heading = HEADINGS[tag]
        elif tag in BREAKS:
            if self.cell is not None:
                self.cell.append(" ")
            else:
                self._flush_text()

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag == "head":
            self.in_head = False
        if tag in DROPPED:
            self.dropped = max(0, self.dropped - 1)
            return
        if self.dropped:
            return
        if tag in ("td", "th") and self.cell is not None and self.row is not None:
            self.row.append(" ".join("".join(self.cell).split()))
            self.cell = None
        elif tag == "tr" and self.row is not None and self.table is not None:
            if any(self.row):
                self.table.append(self.row)
            self.row = None
        elif tag == "table":
            self.tables_depth = max(0, self.tables_depth - 1)
            if self.tables_depth == 0 and self.table is not None:
                if self.table:
                    self.blocks.append(Block(kind="table", rows=self.table, header_rows=1))
                self.table = self.row = self.cell = None
        elif tag in HEADINGS and self.heading is not None:
            self._flush_text()
            self.heading = None
        elif tag in BREAKS and self.cell is None:
            self._flush_text()

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title += data
        if self.dropped or self.in_head:
            return
        if self.cell is not None:
            self.cell.append(data)
        elif self.table is None:
            self.text.append(data)

    def close(self) -> None:
        super().close()
        self._flush_text()


def parse_html(data: bytes, *, limits: Limits, progress: Progress) -> Parsed:
    text, notes = decode_text(data)
    reader = _Reader()
    reader.feed(text)
    reader.close()
    progress(1, 1)
    return Parsed(title=" ".join(reader.title.split()), pages=1, blocks=reader.blocks, notes=notes)
