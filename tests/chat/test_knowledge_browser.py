"""Company knowledge in the chat, in Debian's chromium, as a new user would try it: an admin
creates a knowledge base in the browser and uploads the two sample filings, asks "What was
Adobe's total revenue in fiscal 2022?" in a chat that uses it, and a citation under the
answer opens the right page's passage — on a desktop and at a 390 px phone width.

A tiny random model answers: what is checked is the citation (document, page, passage), not
the words. The sample filings are in `../shared/data/filings` (as CI has them); without them a
small filing of the same kind stands in.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from app.main import create_app
from tests.chat.knowledge_data import QUESTION, knowledge_base_with, small_filing
from tests.live import live_server
from tests.support.scripted_engine import ScriptedEngine
from tests.support.web import sign_in_as_admin

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
FILINGS = Path(__file__).resolve().parents[3] / "shared" / "data" / "filings"
SAMPLES = ("ADOBE_2022_10K.pdf", "AMAZON_2017_10K.pdf")
WAIT = 90_000


def documents() -> tuple[dict[str, bytes], set[str]]:
    """The files to upload and the pages of the Adobe filing that state its total revenue."""
    if all((FILINGS / name).is_file() for name in SAMPLES):
        return {name: (FILINGS / name).read_bytes() for name in SAMPLES}, {"40", "41", "42", "54"}
    return {"ADOBE_2022_10K.pdf": small_filing()}, {"2"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser: Browser, errors: list[str], **options: object) -> Page:
    page = browser.new_context(**options).new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page


def revenue_citation(answer: Locator, pages: set[str]) -> Locator:
    """The citation under `answer` that quotes Adobe's total revenue on one of `pages`."""
    for citation in answer.locator('.citation[data-document="ADOBE_2022_10K"]').all():
        if citation.get_attribute("data-page") in pages and "17,606" in (
            citation.text_content() or ""
        ):
            return citation
    raise AssertionError(f"no citation of ADOBE_2022_10K pages {sorted(pages)} quotes 17,606")


def within(page: Page, locator: Locator, width: int = 390) -> None:
    box = locator.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, box


def test_a_question_in_a_chat_that_uses_the_filings_cites_the_right_page(
    browser: Browser,
    make_settings,  # noqa: ANN001
) -> None:
    files, pages = documents()
    errors: list[str] = []
    settings = make_settings(max_new_tokens=16)
    with live_server(create_app(settings)) as live:
        page = open_page(browser, errors)
        sign_in_as_admin(page, live)

        # The admin builds the knowledge base in the browser.
        page.goto(f"{live.url}/admin/knowledge")
        page.fill("input[name=name]", "Filings")
        with page.expect_navigation():
            page.click("button:has-text('Create')")
        page.set_input_files(
            "#dropzone input[type=file]",
            [
                {"name": name, "mimeType": "application/pdf", "buffer": data}
                for name, data in files.items()
            ],
        )
        with page.expect_navigation():
            page.click("button:has-text('Upload')")
        for name in files:
            row = page.locator(f'tr[data-document="{name}"]')
            expect(row).to_have_attribute("data-state", "indexed", timeout=WAIT)

        # A new chat that uses it.
        page.goto(f"{live.url}/")
        picker = page.locator("#composer .knowledge-picker")
        expect(picker.locator("summary")).to_have_text("Knowledge: none")
        picker.locator("summary").click()
        picker.get_by_label("Filings").check()
        box = page.get_by_label("Message")
        box.fill(QUESTION)
        box.press("Enter")
        page.wait_for_url(re.compile(r"/c/[0-9a-f]+$"))
        answer = page.locator("article.msg.assistant[data-status='complete']")
        expect(answer).to_be_visible(timeout=WAIT)

        # The conversation keeps the choice; the answer has numbered citations.
        header = page.locator(".chat-header .knowledge-picker")
        expect(header.locator("summary")).to_have_text("Knowledge: Filings")
        expect(answer.locator(".citations li").first).to_contain_text("[1]")
        citation = revenue_citation(answer, pages)
        passage = citation.locator(".passage-text")
        expect(passage).to_be_hidden()
        citation.locator("summary").click()
        expect(passage).to_be_visible()
        expect(passage).to_contain_text("Total revenue")
        expect(passage).to_contain_text("17,606")
        expect(citation.locator("summary")).to_contain_text("ADOBE_2022_10K, page ")
        conversation = page.url

        # At 390 px: the picker and the citations are usable and nothing scrolls sideways.
        phone = open_page(browser, errors, viewport={"width": 390, "height": 844}, is_mobile=True)
        sign_in_as_admin(phone, live)
        phone.goto(conversation)
        summary = phone.locator(".chat-header .knowledge-picker summary")
        within(phone, summary)
        summary.click()
        checkbox = phone.locator(".chat-header .knowledge-picker").get_by_label("Filings")
        expect(checkbox).to_be_checked()
        within(phone, checkbox)
        citation = revenue_citation(phone.locator("article.msg.assistant").last, pages)
        citation.scroll_into_view_if_needed()
        citation.locator("summary").click()
        passage = citation.locator(".passage-text")
        expect(passage).to_be_visible()
        within(phone, passage)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the conversation scrolls sideways at 390 px ({width} px wide)"

        phone.goto(f"{live.url}/")
        composer = phone.locator("#composer .knowledge-picker")
        composer.locator("summary").click()
        within(phone, composer.get_by_label("Filings"))
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the new chat page scrolls sideways at 390 px ({width} px wide)"
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_a_citation_tag_in_the_answer_opens_its_source_and_the_picker_saves(
    browser: Browser,
    make_settings,  # noqa: ANN001
) -> None:
    errors: list[str] = []
    engine = ScriptedEngine(["Total revenue was ", "$17,606 million ", "[1]."])
    with live_server(create_app(make_settings(), engine=engine)) as live:
        knowledge_base_with(live, {"ADOBE_2022_10K.pdf": small_filing()})
        page = open_page(browser, errors)
        sign_in_as_admin(page, live)
        page.goto(f"{live.url}/")
        picker = page.locator("#composer .knowledge-picker")
        picker.locator("summary").click()
        picker.get_by_label("Filings").check()
        page.get_by_label("Message").fill(QUESTION)
        page.get_by_label("Message").press("Enter")
        answer = page.locator("article.msg.assistant[data-status='complete']")
        expect(answer).to_be_visible(timeout=WAIT)

        # "[1]" in the text is a link to source 1, which it opens.
        link = answer.locator(".body a.cite")
        expect(link).to_have_text("[1]")
        source = answer.locator(".citation[data-number='1']")
        expect(source.locator(".passage-text")).to_be_hidden()
        link.click()
        expect(source.locator(".passage-text")).to_be_visible()
        expect(source.locator(".passage-text")).to_contain_text("| Total revenue | 17,606")

        # Unticking the base saves at once (no button), and stays after a reload.
        header = page.locator(".chat-header .knowledge-picker")
        header.locator("summary").click()
        with page.expect_response(re.compile(r"/knowledge$")):
            header.get_by_label("Filings").uncheck()
        expect(page.locator(".chat-header .knowledge-picker summary")).to_have_text(
            "Knowledge: none"
        )
        page.reload()
        expect(page.locator(".chat-header .knowledge-picker summary")).to_have_text(
            "Knowledge: none"
        )
    assert not errors, f"JavaScript errors on the page: {errors}"
