"""Calculations on the chat page in Debian chromium: a computed result and a refused
calculation each show as their own block, streamed and after a reload, at desktop and 390 px."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.web import sign_in_as_admin

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
# The model's side of the answer: each `>>` ends a generation, the calculator writes the
# result, and the next generation goes on with the chunks after it.
SCRIPT = [
    "Revenue grew ", "<<calc: percent(150 - 120, 120)", ">>", "% a year. ",
    "The margin is <<calc: 45 / 0", ">>", " so check the cost line.",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_calculations_show_as_blocks(browser: Browser, scripted_server, width: int) -> None:  # noqa: ANN001
    context = browser.new_context(viewport={"width": width, "height": 800})
    page: Page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        with scripted_server(chunks=SCRIPT, delay=0.05) as live:
            sign_in_as_admin(page, live)
            page.goto(live.url + "/")
            box = page.get_by_label("Message")
            box.fill("How fast did revenue grow?")
            box.press("Enter")
            page.wait_for_url(re.compile(r"/c/[0-9a-f]+$"))
            answer = page.locator("article.msg.assistant[data-status='complete']")
            expect(answer).to_be_visible(timeout=30_000)
            for _ in range(2):  # as streamed, then as stored
                computed = answer.locator(".calc:not(.calc-failed):not(.calc-unverified)")
                expect(computed).to_have_count(1)
                expect(computed.locator(".calc-expr")).to_have_text("percent(150 - 120, 120)")
                expect(computed.locator(".calc-result")).to_have_text("25")
                failed = answer.locator(".calc.calc-failed")
                expect(failed).to_contain_text("not computed: division by zero")
                expect(answer.locator(".body")).to_contain_text("% a year.")
                expect(answer.locator(".body")).not_to_contain_text("<<calc")
                assert page.evaluate("document.documentElement.scrollWidth") <= width
                page.reload()
                answer = page.locator("article.msg.assistant[data-status='complete']")
    finally:
        context.close()
    assert not errors, errors
