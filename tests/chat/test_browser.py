"""The chat page in Debian chromium: tokens stream in, Stop keeps the partial answer."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.live import LiveServer
from tests.support.web import sign_in_as_admin

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_answer_streams_stop_keeps_partial_and_history_survives_reload(
    page: Page,
    scripted_server,  # noqa: ANN001
) -> None:
    # A scripted answer that streams for a minute: still streaming whenever Stop is pressed,
    # however loaded the machine (the tiny model may end on its own before a busy box clicks).
    words = [f" word{i}" for i in range(1200)]
    with scripted_server(chunks=words, delay=0.05) as live:
        stop_a_streaming_answer(page, live)


def stop_a_streaming_answer(page: Page, live: LiveServer) -> None:
    sign_in_as_admin(page, live)
    page.goto(live.url + "/")
    box = page.get_by_label("Message")
    box.fill("What is the time value of money?")
    box.press("Enter")

    page.wait_for_url(re.compile(r"/c/[0-9a-f]+$"))
    answer = page.locator("article.msg.assistant").last
    body = answer.locator(".body")
    # Tokens arrive while the answer is still streaming.
    expect(body).not_to_be_empty(timeout=30_000)
    first_length = len(body.inner_text())
    page.wait_for_function(
        "n => document.querySelector('article.msg.assistant:last-of-type .body')"
        ".innerText.length > n + 20",
        arg=first_length,
        timeout=30_000,
    )
    assert answer.get_attribute("data-status") in ("pending", "streaming")

    answer.get_by_role("button", name="Stop").click()
    stopped = page.locator("article.msg.assistant[data-status='stopped']")
    expect(stopped).to_be_visible(timeout=30_000)
    expect(stopped).to_contain_text("Stopped")
    partial = stopped.locator(".body").inner_text()
    assert partial.strip()

    page.reload()
    expect(page.locator("article.msg.user")).to_contain_text("What is the time value of money?")
    expect(page.locator("article.msg.assistant[data-status='stopped']")).to_be_visible()
    expect(page.locator("nav.sidebar")).to_contain_text("What is the time value of money?")


def test_shift_enter_adds_a_newline_and_enter_sends(page: Page, server: LiveServer) -> None:
    sign_in_as_admin(page, server)
    page.goto(server.url + "/")
    box = page.get_by_label("Message")
    box.type("Line one")
    box.press("Shift+Enter")
    box.type("Line two")
    assert box.input_value() == "Line one\nLine two"
    box.press("Enter")
    page.wait_for_url(re.compile(r"/c/[0-9a-f]+$"))
    expect(page.locator("article.msg.assistant[data-status='complete']")).to_be_visible(
        timeout=20_000
    )
    # A follow-up in the same conversation is added in place by HTMX and streams too.
    box = page.get_by_label("Message")
    box.fill("And a follow-up?")
    box.press("Enter")
    expect(page.locator("article.msg.user")).to_have_count(2)
    expect(page.locator("article.msg.assistant[data-status='complete']")).to_have_count(
        2, timeout=20_000
    )
    assert box.input_value() == ""


def test_empty_message_shows_a_clear_error(page: Page, server: LiveServer) -> None:
    sign_in_as_admin(page, server)
    page.goto(server.url + "/")
    page.get_by_role("button", name="Send").click()  # blocked by the browser: field required
    box = page.get_by_label("Message")
    box.fill("   ")
    page.evaluate("document.querySelector('#composer textarea').removeAttribute('required')")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#composer-error")).to_contain_text("empty")
    assert box.input_value() == "   ", "what the user typed is kept"


def test_markdown_answer_is_rendered_as_html(page: Page, server: LiveServer) -> None:
    sign_in_as_admin(page, server)
    page.goto(server.url + "/")
    box = page.get_by_label("Message")
    box.fill("Table please:\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n`code` and **bold**")
    box.press("Enter")
    page.wait_for_url(re.compile(r"/c/[0-9a-f]+$"))
    user = page.locator("article.msg.user").first
    expect(user.locator("table td").first).to_have_text("1")
    expect(user.locator("strong")).to_have_text("bold")


def test_phone_layout_hides_the_sidebar_behind_a_toggle(
    browser: Browser, server: LiveServer
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 800})
    page = context.new_page()
    sign_in_as_admin(page, server)
    page.goto(server.url + "/")
    expect(page.locator("nav.sidebar")).to_be_hidden()
    page.locator("label.nav-button").click()
    expect(page.locator("nav.sidebar")).to_be_visible()
    expect(page.get_by_label("Message")).to_be_visible()
    context.close()
