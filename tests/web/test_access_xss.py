"""Hostile HTML in prompts and in model output never runs in a real browser (chromium)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.web import browser_sign_in, create_account

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAYLOADS = [
    "<script>window.__xss='script';alert('script')</script>",
    "<img src=x onerror=\"window.__xss='img';alert('img')\">",
    "[markdown link](javascript:window.__xss='md';alert('md'))",
    '<a href="javascript:window.__xss=\'a\'" id="raw-link">raw link</a>',
    "<svg onload=\"window.__xss='svg'\"><circle r=5></circle></svg>",
    "<iframe src=\"javascript:window.__xss='iframe'\"></iframe>",
    '<div onmouseover="window.__xss=\'hover\'" class="hover-me">hover here</div>',
    "<form action=\"javascript:window.__xss='form'\"><button>go</button></form>",
    "<object data=\"javascript:window.__xss='object'\"></object>",
    "<style>body{display:none}</style>",
]
HOSTILE = "Sure. " + " ".join(PAYLOADS) + " Done."
DANGEROUS_DOM = """() => {
  const root = document.querySelector('#messages');
  const bad = [];
  for (const el of root.querySelectorAll('*')) {
    const tag = el.tagName.toLowerCase();
    // Message text lands in a message's body; the page's own controls around it (edit,
    // feedback) are forms by design, but none of them may run anything either.
    const inText = el.closest('.msg .body');
    const active = ['script', 'iframe', 'object', 'embed', 'svg', 'style', 'img'];
    if (active.includes(tag) || (inText && tag === 'form')) {
      bad.push(tag);
    }
    for (const attr of el.attributes) {
      if (attr.name.startsWith('on')) bad.push(tag + '[' + attr.name + ']');
      if (/^\\s*javascript:/i.test(attr.value)) bad.push(tag + '[' + attr.name + '=js]');
    }
  }
  return bad;
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def chunks(text: str, size: int = 7) -> list[str]:
    """Split so tags arrive cut in pieces, as tokens would cut them."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def assert_nothing_ran(page: Page, dialogs: list[str]) -> None:
    assert page.evaluate("() => window.__xss === undefined"), page.evaluate("window.__xss")
    assert dialogs == []
    assert page.evaluate(DANGEROUS_DOM) == []
    assert page.locator("body").is_visible()


def test_hostile_prompt_and_model_output_stay_inert(browser: Browser, scripted_server) -> None:  # noqa: ANN001
    with scripted_server(chunks=chunks(HOSTILE), delay=0.005) as server:
        create_account(server, "alice", "alice-password-1")
        context = browser.new_context()
        page = context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        browser_sign_in(page, server.url, "alice", "alice-password-1")
        response = page.goto(server.url + "/")
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy

        page.get_by_label("Message").fill("Explain this: " + " ".join(PAYLOADS))
        page.get_by_role("button", name="Send").click()
        answer = page.locator("article.msg.assistant").last
        expect(answer).to_have_attribute("data-status", "complete", timeout=20_000)
        expect(answer).to_contain_text("Done.")
        expect(page.locator("article.msg.user").last).to_contain_text("<script>")
        assert_nothing_ran(page, dialogs)

        # Touch what a person might: hover, click the links that are left.
        for element in page.locator("#messages .hover-me, #messages a").all():
            element.hover()
        for link in page.locator("#messages a").all():
            href = link.get_attribute("href") or ""
            assert not href.strip().lower().startswith("javascript:")
        assert_nothing_ran(page, dialogs)

        # The stored conversation, rendered by the server on reload, is as inert.
        page.reload()
        expect(page.locator("article.msg.assistant").last).to_contain_text("Done.")
        assert_nothing_ran(page, dialogs)
        # No third-party request left the page (no CDN, nothing the payloads named).
        assert requests and all(url.startswith(server.url + "/") for url in requests), requests
        context.close()
