"""Debian's chromium through Playwright, for the page tests: launching it, a page that
collects JavaScript and CSP errors, and the check that a page does not scroll sideways."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
WIDER_THAN_VIEWPORT = """() => {
  const scrolls = (e) => ['auto', 'scroll'].includes(getComputedStyle(e).overflowX);
  const inScroller = (e) => { for (let p = e.parentElement; p; p = p.parentElement) {
    if (scrolls(p)) return true; } return false; };
  return Array.from(document.querySelectorAll('body *'))
    .filter(e => { const r = e.getBoundingClientRect();
                   return r.width > 0 && r.right > window.innerWidth + 1 && e.checkVisibility()
                     && !inScroller(e); })
    .slice(0, 5).map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : ''));
}"""


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser: Browser, errors: list[str], **options: object) -> Page:
    """A page in its own context; JavaScript errors and CSP refusals land in `errors`."""
    context = browser.new_context(**options)
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda message: (
            errors.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    return page


def assert_fits(page: Page, what: str) -> None:
    """Nothing on the page is wider than the viewport (no sideways scrolling) or cut at its
    edge, except inside a box that scrolls (a wide table in its card)."""
    width = page.evaluate("document.documentElement.scrollWidth")
    viewport = page.evaluate("window.innerWidth")
    outside = page.evaluate(WIDER_THAN_VIEWPORT)
    assert width <= viewport and not outside, (
        f"{what} does not fit {viewport} px ({width} px wide; past the edge, outside any "
        f"scrolling box: {outside})"
    )
