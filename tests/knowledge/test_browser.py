"""The knowledge console in Debian's chromium, as a new admin would use it: create a
knowledge base, drop the two sample filings on the page, watch them index, open a passage,
delete a document — on a desktop and at a 390 px phone width."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.chat.knowledge_data import small_filing
from tests.knowledge.documents import make_pdf, prose_page
from tests.support.web import sign_in_as_admin

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
FILINGS = Path(__file__).resolve().parents[3] / "shared" / "data" / "filings"
SAMPLES = ("ADOBE_2022_10K.pdf", "AMAZON_2017_10K.pdf")
WAIT = 60_000

DROP = """([names, payloads]) => {
  const transfer = new DataTransfer();
  names.forEach((name, i) => {
    const bytes = Uint8Array.from(atob(payloads[i]), c => c.charCodeAt(0));
    transfer.items.add(new File([bytes], name, {type: "application/pdf"}));
  });
  const zone = document.getElementById("dropzone");
  for (const type of ["dragenter", "dragover", "drop"]) {
    const init = {bubbles: true, cancelable: true, dataTransfer: transfer};
    zone.dispatchEvent(new DragEvent(type, init));
  }
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def documents() -> tuple[dict[str, bytes], dict[str, str], str, str]:
    """The two filings, their page counts, the page of Adobe's income statement and its
    revenue row; where the shared data is not checked out, small filings of the same kind."""
    if all((FILINGS / name).is_file() for name in SAMPLES):
        files = {name: (FILINGS / name).read_bytes() for name in SAMPLES}
        pages = {"ADOBE_2022_10K.pdf": "99", "AMAZON_2017_10K.pdf": "85"}
        return files, pages, "54", "| Total revenue | 17,606 | 15,785 | 12,868 |"
    files = {
        "ADOBE_2022_10K.pdf": small_filing(),
        "AMAZON_2017_10K.pdf": make_pdf([prose_page(["Amazon sells online."], heading="PART I")]),
    }
    pages = {"ADOBE_2022_10K.pdf": "2", "AMAZON_2017_10K.pdf": "1"}
    return files, pages, "2", "| Total revenue | 17,606 | 15,785 |"


def open_page(browser: Browser, errors: list[str], **options: object) -> Page:
    page = browser.new_context(**options).new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())
    return page


def test_a_new_admin_builds_a_knowledge_base_from_the_filings(knowledge_server, browser) -> None:  # noqa: ANN001
    errors: list[str] = []
    with knowledge_server() as live:
        page = open_page(browser, errors)
        sign_in_as_admin(page, live)
        page.goto(f"{live.url}/admin")
        page.click("nav >> text=Knowledge")
        page.fill("input[name=name]", "Filings")
        with page.expect_navigation():
            page.click("button:has-text('Create')")
        expect(page.locator("h1")).to_have_text("Filings")

        files, page_counts, statement_page_number, revenue_row = documents()
        names = sorted(files)
        payloads = [base64.b64encode(files[n]).decode() for n in names]
        page.evaluate(DROP, [names, payloads])
        expect(page.locator(".dropzone-files")).to_contain_text("2 file(s): " + ", ".join(names))
        with page.expect_navigation():
            page.click("button:has-text('Upload')")
        expect(page.locator('[data-outcome="queued"]')).to_have_count(2)

        for name, pages in sorted(page_counts.items()):
            row = page.locator(f'tr[data-document="{name}"]')
            expect(row).to_have_attribute("data-state", "indexed", timeout=WAIT)
            expect(row.locator("td").nth(2)).to_have_text(pages)

        page.click("a:has-text('ADOBE_2022_10K.pdf')")
        statement = page.locator(
            f'article.passage[data-page="{statement_page_number}"]', has_text="17,606"
        )
        while statement.count() == 0 and page.locator("text=Later passages →").count():
            with page.expect_navigation():
                page.click("text=Later passages →")
        expect(statement.first).to_contain_text(revenue_row)

        page.go_back()
        page.goto(f"{live.url}/admin/knowledge")
        page.click("a:has-text('Filings')")
        with page.expect_navigation():
            page.locator(
                'tr[data-document="AMAZON_2017_10K.pdf"] button:has-text("Delete")'
            ).click()
        expect(page.locator(".flash")).to_contain_text("Document deleted")
        expect(page.locator('tr[data-document="AMAZON_2017_10K.pdf"]')).to_have_count(0)

        phone = open_page(browser, errors, viewport={"width": 390, "height": 844}, is_mobile=True)
        sign_in_as_admin(phone, live)
        phone.goto(page.url)
        expect(phone.locator('tr[data-document="ADOBE_2022_10K.pdf"]')).to_be_visible()
        expect(phone.locator("#dropzone input[type=file]")).to_be_visible()
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways at 390 px ({width} px wide)"
        box = phone.locator("button:has-text('Upload')").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390
        assert re.search(r"/admin/knowledge/\d+", phone.url)
    assert not errors, f"JavaScript errors on the page: {errors}"
