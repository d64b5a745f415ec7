"""Errors as a browser sees them: styled pages with a way back (404, 403, a foreign
conversation), the favicon; API clients keep JSON."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.support.browser import PHONE, assert_fits, chromium, new_page
from tests.support.web import browser_sign_in, create_account, signed_in_client

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def test_error_pages_are_styled_with_a_way_back(browser: Browser, scripted_server) -> None:  # noqa: ANN001
    errors: list[str] = []
    with scripted_server() as live:
        alice = signed_in_client(live, "alice", "alice-password-1")
        mine = alice.post("/c", {"content": "Alice's numbers"}, follow_redirects=True).url.path
        create_account(live, "bob", "bob-password-12")
        for viewport in ({"width": 1280, "height": 800}, PHONE):
            page = new_page(browser, errors, viewport=viewport)
            browser_sign_in(page, live.url, "bob", "bob-password-12")
            for path, status, title in (
                ("/no/such/page", 404, "Not found"),
                (mine, 404, "Not found"),  # someone else's conversation: as if absent
                ("/admin/users", 403, "Not for this account"),
            ):
                response = page.goto(live.url + path)
                assert response.status == status, path
                expect(page.locator(".error-card h1")).to_have_text(title)
                expect(page.get_by_role("link", name="Back to the chat")).to_be_visible()
                assert "Alice" not in page.content()
                assert_fits(page, f"the {status} page")
            page.get_by_role("link", name="Back to the chat").click()
            expect(page.get_by_label("Message")).to_be_visible()
            icon = page.locator("link[rel=icon]").get_attribute("href")
            assert page.request.get(live.url + icon).headers["content-type"] == "image/svg+xml"
            page.context.close()
        # API clients and /v1 keep JSON, whatever they accept.
        plain = httpx.get(f"{live.url}/no/such/page")
        assert plain.status_code == 404 and plain.json() == {"detail": "Not Found"}
        api = httpx.get(f"{live.url}/v1/nothing", headers={"Accept": "text/html"})
        assert api.status_code == 404 and api.headers["content-type"] == "application/json"
        assert httpx.get(f"{live.url}/favicon.ico").status_code == 200
    assert not errors, errors
