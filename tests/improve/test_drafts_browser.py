"""Drafting dataset records from a knowledge base, in Debian chromium at desktop and 390 px
widths, with the tiny random Llama as the served model: the form on the dataset page, the
pending state while passages are written, the page refreshing itself when the run ends, the
drafts waiting for review with a link to their passage."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.improve.test_drafts import knowledge_base, new_dataset
from tests.live import LiveServer
from tests.support.web import ADMIN_NAME, ADMIN_PASSWORD, browser_sign_in, signed_in_client

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
WAIT = 120_000
"""The tiny model writes each passage's reply in seconds, slower on a busy 2-core box."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_draft_from_passages_shows_progress_then_the_drafts(
    browser: Browser, server: LiveServer, width: int
) -> None:
    admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
    knowledge_base(admin, "Filings")
    page_path = new_dataset(admin, "desk")
    admin.http.close()

    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    browser_sign_in(page, server.url, ADMIN_NAME, ADMIN_PASSWORD)
    page.goto(server.url + page_path)
    form = page.locator("form#drafting")
    expect(form.get_by_label("Knowledge base")).to_have_value(re.compile(r"\d+"))
    expect(form.get_by_label("Passages")).to_have_value("3")  # the default is small
    form.get_by_label("Passages").fill("2")
    form.get_by_role("button", name="Draft Q/A from passages").click()
    expect(page.locator(".flash")).to_contain_text("Drafting from 2 passage(s) of Filings")
    progress = page.locator("#drafting-progress")
    # The run's state while it writes (the page polls it), then the page reloads on its own.
    expect(progress).to_have_attribute("data-state", "running")
    expect(progress).to_contain_text("is being written")
    expect(progress.get_by_role("button", name="Stop drafting")).to_be_visible()
    expect(progress).to_have_attribute("data-state", "finished", timeout=WAIT)
    expect(progress).to_contain_text("Drafting from Filings finished: 2 of 2 passage(s)")
    drafts = page.locator("tr[data-source=draft]")
    added = int(progress.locator(".drafting-added").inner_text().split()[0])
    assert added >= 1
    expect(drafts).to_have_count(added)
    expect(drafts.first).to_have_attribute("data-state", "pending")  # waiting for review
    assert page.evaluate("document.documentElement.scrollWidth") <= width + 1

    link = drafts.first.locator("a.passage-link")
    passage_id = link.inner_text().removeprefix("passage ")
    link.click()
    expect(page.locator(f"#passage-{passage_id}")).to_be_visible()
    assert not errors, errors
    context.close()
