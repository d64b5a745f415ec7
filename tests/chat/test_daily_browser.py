"""The chat as people use it every day, in chromium at desktop and phone width: the honest
waiting state, Markdown while it streams, a send that fails, search, export, copy, edit and
resend, per-conversation settings and the adapter picker."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from app.main import create_app
from tests.live import live_server, read_sse
from tests.support.browser import PHONE, assert_fits, chromium, new_page
from tests.support.scripted_engine import OneAtATimeEngine
from tests.support.web import sign_in_as_admin, signed_in_client

pytestmark = pytest.mark.browser
WAIT = 30_000
ANSWER = [
    "**Revenue** grew ",
    "by 12% in 2023.\n\n",
    "| Year | Revenue |\n|---|---|\n| 2022 | 100 |\n| 2023 | 112 |\n\n",
    "```python\ngrowth = 112 / 100 - 1\n```\n",
    *[f" more{i}" for i in range(40)],
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def errors() -> Iterator[list[str]]:
    found: list[str] = []
    yield found
    assert not found, f"JavaScript or CSP errors on the page: {found}"


def ask(page: Page, question: str) -> None:
    box = page.get_by_label("Message")
    box.fill(question)
    box.press("Enter")


def test_waiting_then_writing_with_markdown_while_it_streams(
    browser: Browser,
    make_settings,  # noqa: ANN001
    errors: list[str],
) -> None:
    engine = OneAtATimeEngine(ANSWER, delay=0.06)
    with live_server(create_app(make_settings(), engine=engine)) as live:
        # Someone else's answer is being written when ours is sent.
        alice = signed_in_client(live, "alice", "alice-password-1")
        first = alice.post("/c", {"content": "Theirs"}, follow_redirects=True)
        stream = re.search(r'sse-connect="([^"]+)"', first.text).group(1)

        def read_theirs() -> None:
            with alice.http.stream("GET", stream) as response:
                for _ in read_sse(response):
                    pass

        page = new_page(browser, errors)
        sign_in_as_admin(page, live)
        page.goto(live.url + "/")
        expect(page.locator(".composer-notice")).to_contain_text("Answers can be wrong")
        theirs = threading.Thread(target=read_theirs)
        theirs.start()
        while engine.active_streams == 0:
            page.wait_for_timeout(20)
        ask(page, "How did revenue grow?")

        answer = page.locator("article.msg.assistant").last
        state = answer.locator(".answer-state")
        expect(state).to_have_text("Waiting for the model (1 ahead of you)…", timeout=WAIT)
        # Then it writes, and the Markdown is already Markdown while it streams.
        expect(state).to_have_text("Writing…", timeout=WAIT)
        streaming = answer.locator(".body.streaming")
        expect(streaming.locator("strong")).to_have_text("Revenue", timeout=WAIT)
        expect(streaming.locator("table td").first).to_have_text("2022", timeout=WAIT)
        assert answer.get_attribute("data-status") in ("pending", "streaming")
        done = page.locator("article.msg.assistant[data-status='complete']")
        expect(done).to_be_visible(timeout=WAIT)
        expect(done.locator(".body strong")).to_have_text("Revenue")
        expect(done.locator(".answer-state")).to_have_count(0)
        theirs.join(timeout=30)


def test_a_send_that_cannot_reach_the_server_says_so_and_keeps_the_text(
    browser: Browser,
    scripted_server,  # noqa: ANN001
    errors: list[str],
) -> None:
    with scripted_server() as live:
        page = new_page(browser, errors)
        sign_in_as_admin(page, live)
        page.goto(live.url + "/")
        # The server goes away: the browser's request fails to connect.
        page.route(
            re.compile(r"/c$"),
            lambda route: (
                route.abort("connectionrefused")
                if route.request.method == "POST"
                else route.continue_()
            ),
        )
        ask(page, "Is the server there?")
        expect(page.locator("#composer-error")).to_contain_text("Could not reach the server")
        expect(page.get_by_label("Message")).to_have_value("Is the server there?")
        assert page.url == live.url + "/"


def test_search_export_copy_edit_settings_and_picker(
    browser: Browser,
    scripted_server,  # noqa: ANN001
    errors: list[str],
) -> None:
    with scripted_server(chunks=ANSWER[:4]) as live:
        page = new_page(
            browser,
            errors,
            permissions=["clipboard-read", "clipboard-write"],
            accept_downloads=True,
        )
        sign_in_as_admin(page, live)
        page.goto(live.url + "/")
        ask(page, "Working capital of ACME")
        expect(page.locator("article.msg.assistant[data-status='complete']")).to_be_visible(
            timeout=WAIT
        )
        page.goto(live.url + "/")
        ask(page, "Dividend policy")
        expect(page.locator("article.msg.assistant[data-status='complete']")).to_be_visible(
            timeout=WAIT
        )
        conversation = page.url

        # The sidebar is grouped by date and searches as one types.
        expect(page.locator(".sidebar .group-label").first).to_have_text("Today")
        page.get_by_label("Search conversations").fill("acme")
        results = page.locator(".search-results li")
        expect(results).to_have_count(1)
        expect(results.first).to_contain_text("Working capital of ACME")
        results.first.locator("a").click()
        expect(page.locator(".chat-title")).to_have_text("Working capital of ACME")
        page.goto(conversation)

        # Copy the answer, and a code block alone.
        answer = page.locator("article.msg.assistant").last
        answer.get_by_role("button", name="Copy the answer").click()
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied.startswith("Revenue grew by 12% in 2023.") and "growth = 112" in copied
        assert "Copy" not in copied, "the code block's button label is not part of the answer"
        answer.get_by_role("button", name="Copy code").click()
        assert page.evaluate("navigator.clipboard.readText()") == "growth = 112 / 100 - 1"

        # Download the conversation as Markdown from the Actions menu.
        page.locator(".chat-menu summary").click()
        with page.expect_download() as download:
            page.get_by_role("link", name="Markdown").click()
        text = open(download.value.path(), encoding="utf-8").read()  # noqa: PTH123
        assert text.startswith("# Dividend policy") and "**Revenue** grew" in text
        page.locator(".chat-menu summary").click()

        # Settings save on their own, within the server's limits.
        page.locator(".chat-settings summary").click()
        page.get_by_label("Temperature").fill("0.2")
        page.get_by_role("button", name="Save").click()
        expect(page.locator(".chat-settings .saved")).to_contain_text("Saved")
        expect(page.locator(".chat-settings summary")).to_contain_text("(custom)")

        # The adapter picker: saved on change, no button, its label whole.
        picker = page.get_by_label("Adapter")
        assert page.locator(".adapter-choice button").count() == 0
        with page.expect_response(re.compile(r"/adapter$")):
            picker.select_option("base")
        expect(page.locator(".adapter-choice .saved")).to_have_text("Saved")
        assert picker.evaluate("el => el.scrollWidth <= el.clientWidth + 1")

        # Edit the question and send it again: the old answer is replaced.
        question = page.locator("article.msg.user").first
        question.locator(".edit-message summary").click()
        question.get_by_label("Edited question").fill("Dividend policy of ACME in 2023")
        question.get_by_role("button", name="Send edited").click()
        expect(page.locator("article.msg.user")).to_have_count(1)
        expect(page.locator("article.msg.user .body")).to_have_text(
            "Dividend policy of ACME in 2023"
        )
        expect(page.locator("article.msg.assistant[data-status='complete']")).to_have_count(
            1, timeout=WAIT
        )


def test_phone_width_chat_and_conversation(
    browser: Browser,
    scripted_server,  # noqa: ANN001
    errors: list[str],
) -> None:
    with scripted_server(chunks=ANSWER[:4]) as live:
        page = new_page(browser, errors, viewport=PHONE, is_mobile=True, has_touch=True)
        sign_in_as_admin(page, live)
        page.goto(live.url + "/")
        assert_fits(page, "the new chat page")
        ask(page, "A long question about the consolidated statement of cash flows for FY2023")
        expect(page.locator("article.msg.assistant[data-status='complete']")).to_be_visible(
            timeout=WAIT
        )
        assert_fits(page, "a conversation")
        title = page.locator(".chat-title").bounding_box()
        menu = page.locator(".chat-menu summary").bounding_box()
        toggle = page.locator("label.nav-button").bounding_box()
        assert toggle["x"] + toggle["width"] <= title["x"], "the menu button covers the title"
        assert title["x"] + title["width"] <= menu["x"] and menu["x"] + menu["width"] <= 390
        page.locator(".chat-menu summary").tap()
        for name in ("Rename", "Delete"):
            box = page.get_by_role("button", name=name).bounding_box()
            assert box and 0 <= box["x"] and box["x"] + box["width"] <= 390, name
        assert_fits(page, "the conversation menu")
        page.locator(".chat-menu summary").tap()
        page.locator(".chat-settings summary").tap()
        assert_fits(page, "the conversation settings")
        page.locator("label.nav-button").tap()
        expect(page.locator("nav.sidebar")).to_be_visible()
        expect(page.get_by_label("Search conversations")).to_be_visible()
