"""The admin console and the keys page in chromium: every page fits a 390 px phone (tables
scroll inside their card), the audit page reads well and keeps its records after "Verify
the chain", and a new API key is shown once, with a copy button, and made once."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from app.store.models import ApiKey
from tests.live import read_sse
from tests.support.browser import DESKTOP, PHONE, assert_fits, chromium, new_page
from tests.support.web import sign_in_as_admin, signed_in_client

pytestmark = pytest.mark.browser
ADMIN_PAGES = (
    "/admin/status",
    "/admin/users",
    "/admin/audit",
    "/admin/adapters",
    "/admin/knowledge",
    "/admin/groups",
    "/admin/usage",
    "/settings/keys",
    "/account",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def test_admin_pages_fit_a_phone(browser: Browser, scripted_server) -> None:  # noqa: ANN001
    errors: list[str] = []
    with scripted_server() as live:
        alice = signed_in_client(live, "alice-with-a-rather-long-user-name", "alice-password-1")
        page = alice.post("/c", {"content": "A question " * 30}, follow_redirects=True)
        stream = re.search(r'sse-connect="([^"]+)"', page.text).group(1)
        with alice.http.stream("GET", stream) as response:
            assert [e for e, _ in read_sse(response)][-1] == "done"
        alice.page("/settings/keys")
        alice.post("/settings/keys", {"name": "a notebook with a long name " * 3})
        phone = new_page(browser, errors, viewport=PHONE, is_mobile=True)
        sign_in_as_admin(phone, live)
        for path in ADMIN_PAGES:
            assert phone.goto(live.url + path).status == 200, path
            assert_fits(phone, path)
        phone.goto(live.url + "/admin/audit")
        phone.locator(".audit-details summary").first.click()
        assert_fits(phone, "the audit page with a record open")
    assert not errors, errors


def test_audit_page_details_filter_and_verify(browser: Browser, scripted_server) -> None:  # noqa: ANN001
    errors: list[str] = []
    with scripted_server() as live:
        page = new_page(browser, errors, viewport=DESKTOP)
        sign_in_as_admin(page, live)
        page.goto(live.url + "/")
        box = page.get_by_label("Message")
        box.fill("Audit me")
        box.press("Enter")
        expect(page.locator("article.msg.assistant[data-status='complete']")).to_be_visible(
            timeout=30_000
        )
        page.goto(live.url + "/admin/audit")
        rows = page.locator("table.audit-table tbody tr[data-record]")
        expect(rows.first).to_be_visible()
        # Details open to formatted JSON.
        prompt = page.locator("tr[data-action='chat.prompt']").first
        details = prompt.locator("details.audit-details")
        expect(details.locator("pre")).to_be_hidden()
        details.locator("summary").click()
        text = details.locator("pre").inner_text()
        assert json.loads(text)["text"] == "Audit me" and '\n  "text": "Audit me"' in text
        assert prompt.locator("td").nth(4).inner_text() == "127.0.0.1"
        # The action filter offers the actions there are.
        actions = page.get_by_label("Action")
        options = actions.locator("option").all_inner_texts()
        assert {"All actions", "chat.prompt", "chat.answer", "auth.sign_in"} <= set(options)
        actions.select_option("chat.prompt")
        page.get_by_role("button", name="Filter").click()
        expect(rows).to_have_count(1)
        # Verifying keeps the records on the page, and the report goes on reload.
        count = page.goto(live.url + "/admin/audit") and rows.count()
        page.get_by_role("button", name="Verify the chain").click()
        expect(page.locator("[data-verify='ok']")).to_contain_text("Chain intact")
        assert page.url == live.url + "/admin/audit"
        assert rows.count() >= count > 0
        page.reload()
        expect(page.locator("[data-verify]")).to_have_count(0)
        assert rows.count() > 0
    assert not errors, errors


def test_a_new_key_is_made_once_shown_once_and_copied(browser: Browser, scripted_server) -> None:  # noqa: ANN001
    errors: list[str] = []
    with scripted_server() as live:
        for viewport in (DESKTOP, PHONE):
            page = new_page(
                browser,
                errors,
                viewport=viewport,
                permissions=["clipboard-read", "clipboard-write"],
            )
            sign_in_as_admin(page, live)
            page.goto(live.url + "/settings/keys")
            page.get_by_label("Name (to tell keys apart)").fill("notebook")
            page.get_by_role("button", name="Create key").click()
            secret = page.locator("#new-key")
            expect(secret).to_contain_text("tlr_")
            assert page.url == live.url + "/settings/keys", "the post redirected"
            assert_fits(page, "the keys page with a new key")
            page.get_by_role("button", name="Copy the new key").click()
            assert page.evaluate("navigator.clipboard.readText()") == secret.inner_text()
            card = page.locator("main.keys-card").bounding_box()
            revoke = page.get_by_role("button", name="Revoke").first.bounding_box()
            assert revoke["x"] + revoke["width"] <= card["x"] + card["width"]
            page.reload()  # no second key, and the secret is not shown again
            expect(page.locator("#new-key")).to_have_count(0)
            page.context.close()
        with live.app.state.session_factory() as session:
            assert session.query(ApiKey).count() == 2  # one per width, none from the reloads
    assert not errors, errors
