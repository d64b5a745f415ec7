"""Each format's parser, and the chunking: tables stay tables, passages know their place."""

from __future__ import annotations

import pytest

from app.knowledge.chunking import chunk
from app.knowledge.parsers.model import Block, Limits, Parsed
from app.knowledge.parsers.registry import parse
from tests.knowledge.documents import make_docx, make_pdf, make_xlsx, prose_page, statement_page

LIMITS = Limits()


def read(kind: str, data: bytes) -> Parsed:
    return parse(kind, data, limits=LIMITS, progress=lambda done, total: None)


def test_pdf_statement_becomes_a_markdown_table_under_its_heading_and_page() -> None:
    data = make_pdf(
        [
            prose_page(
                ["Acme makes anvils for coyotes.", "It employs 1,234 people."], "Item 1. Business"
            ),
            statement_page("Acme", 2022),
        ]
    )
    parsed = read("pdf", data)
    assert parsed.pages == 2
    drafts = chunk(parsed)
    table = next(d for d in drafts if d.has_table)
    assert table.page == 2 and table.location == "page 2"
    assert table.section.endswith("CONSOLIDATED STATEMENTS OF INCOME")
    assert "| Total revenue | 17,606 | 15,785 |" in table.text
    assert "| Subscription | $16,388 | $14,573 |" in table.text
    assert "|  | 2022 | 2021 |" in table.text, "the year line is the table's header"
    assert "(In millions)" in table.text, "the caption travels with its table"
    prose = next(d for d in drafts if d.page == 1)
    assert prose.section == "Item 1. Business"
    assert "It employs 1,234 people." in prose.text and not prose.has_table


def test_a_sentence_with_a_figure_in_another_font_is_not_a_table() -> None:
    # As filings set it: the figure bold, a word space (inside the text) either side of it.
    line = [(60, 700, "We employed approximately "), (192, 700, "566,000 "), (232, 700, "people.")]
    drafts = chunk(read("pdf", make_pdf([line])))
    assert drafts[0].text == "We employed approximately 566,000 people."
    assert not drafts[0].has_table


def test_docx_headings_paragraphs_and_tables() -> None:
    data = make_docx(
        heading="Treasury policy",
        paragraphs=[
            "Cash above the operating floor is swept daily.",
            "Limits are reviewed yearly.",
        ],
        table=[["Counterparty", "Limit"], ["Bank A", "50,000,000"], ["Bank | B", "25,000,000"]],
    )
    drafts = chunk(read("docx", data))
    assert all(d.section == "Treasury policy" for d in drafts)
    text = "\n".join(d.text for d in drafts)
    assert "Cash above the operating floor is swept daily." in text
    assert "| Counterparty | Limit |" in text
    assert "| Bank \\| B | 25,000,000 |" in text, "a pipe in a cell cannot end the cell"


def test_xlsx_sheets_are_tables_with_their_header_and_row_numbers() -> None:
    rows = [["Account", "Q1", "Q2"], *[[f"Account {i}", i * 10, i * 10.5] for i in range(1, 41)]]
    data = make_xlsx({"Budget": rows, "Notes": [["Note"], ["Approved by the board"]]})
    parsed = read("xlsx", data)
    assert parsed.pages == 2
    drafts = chunk(parsed)
    budget = [d for d in drafts if d.location.startswith("Budget")]
    assert [d.location for d in budget] == ["Budget rows 2-31", "Budget rows 32-41"]
    assert all(d.text.startswith("| Account | Q1 | Q2 |") for d in budget), "header on every part"
    assert "| Account 3 | 30 | 31.5 |" in budget[0].text
    assert budget[0].section == "Budget"
    assert any("Approved by the board" in d.text for d in drafts)


def test_csv_with_semicolons() -> None:
    data = b"Metric;FY2022;FY2021\nRevenue;17,606;15,785\nNet income;4,756;4,822\n"
    drafts = chunk(read("csv", data))
    assert drafts[0].text.splitlines()[0] == "| Metric | FY2022 | FY2021 |"
    assert "| Net income | 4,756 | 4,822 |" in drafts[0].text


def test_html_keeps_text_headings_and_tables_and_drops_scripts() -> None:
    page = (
        b"<html><head><title>Board pack</title><script>var leaked = 1;</script></head><body>"
        b"<h1>Liquidity</h1><p>Cash was <b>strong</b> at year end.</p>"
        b"<script>alert('x')</script><style>p { color: red }</style>"
        b"<noscript>enable javascript</noscript><iframe src='https://evil.example'>frame</iframe>"
        b"<table><tr><th>Item</th><th>Amount</th></tr><tr><td>Cash</td><td>1,200</td></tr></table>"
        b'<p onclick="steal()">Escaped &lt;b&gt; text</p></body></html>'
    )
    parsed = read("html", page)
    assert parsed.title == "Board pack"
    text = "\n".join(d.text for d in chunk(parsed))
    for gone in ("leaked", "alert", "color: red", "enable javascript", "frame", "steal"):
        assert gone not in text
    assert "Cash was strong at year end." in text
    assert "| Cash | 1,200 |" in text
    assert "Escaped <b> text" in text, "entities become text, to be escaped where shown"
    assert chunk(parsed)[0].section == "Liquidity"


def test_markdown_sections_tables_and_code() -> None:
    data = (
        b"# Close checklist\n\nIntro line.\n\n## Accruals\n\n| Step | Owner |\n|---|---|\n"
        b"| Book accruals | AP |\n| Review | Controller |\n\n```\n# not a heading\n```\n"
    )
    drafts = chunk(read("markdown", data))
    table = next(d for d in drafts if d.has_table)
    assert table.section == "Close checklist › Accruals"
    assert "| Review | Controller |" in table.text
    assert any("# not a heading" in d.text for d in drafts)


def test_plain_text_paragraphs_and_windows_1252() -> None:
    data = "Caf\xe9 revenue rose.\n\nSecond paragraph.".encode("cp1252")
    parsed = read("text", data)
    assert [b.text for b in parsed.blocks] == ["Café revenue rose.", "Second paragraph."]
    assert parsed.notes == ["not UTF-8: read as Windows-1252"]


def test_a_table_is_never_cut_unless_huge_and_then_each_part_repeats_its_header() -> None:
    rows = [["Item", "Amount"], *[[f"line item number {i}", f"{i},000"] for i in range(80)]]
    huge = Parsed(
        title="t",
        pages=1,
        blocks=[
            Block(kind="text", text="Items (in thousands)", page=1),
            Block(kind="table", rows=rows, page=1),
        ],
    )
    drafts = chunk(huge, target=400)
    assert len(drafts) >= 2 and all(d.has_table for d in drafts), "over 4 x target: cut"
    assert drafts[0].text.startswith("Items (in thousands)\n\n| Item | Amount |")
    for part in drafts:
        assert "| Item | Amount |\n|---|---|" in part.text
        assert len(part.text) <= 1600 + len("Items (in thousands)") + 2
    whole = "\n".join(d.text for d in drafts)
    assert all(f"| line item number {i} | {i},000 |" in whole for i in range(80))
    fits = chunk(
        Parsed(title="t", pages=1, blocks=[Block(kind="table", rows=rows[:30], page=1)]),
        target=400,
    )
    assert len(fits) == 1, "up to 4 x target a table stays whole"


@pytest.mark.parametrize("target", [300, 1200])
def test_long_paragraphs_split_at_sentences_and_pages_never_mix(target: int) -> None:
    sentence = "Revenue grew because subscriptions grew. "
    parsed = Parsed(
        title="t",
        pages=2,
        blocks=[
            Block(kind="text", text=sentence * 60, page=1),
            Block(kind="text", text="Page two starts here.", page=2),
        ],
    )
    drafts = chunk(parsed, target=target)
    assert all(len(d.text) <= target for d in drafts)
    assert all(d.text.endswith(".") for d in drafts)
    assert drafts[-1].page == 2 and drafts[-1].text == "Page two starts here."
