"""OpenID Connect sign-in in chromium: Teller's button, the real provider's form, back signed in;
the groups and usage pages at phone width."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from app.auth import service as accounts
from app.main import create_app
from tests.auth.oidc import ACCOUNTS, oidc_provider, settings_for
from tests.live import free_port, live_server
from tests.support.scripted_engine import ScriptedEngine

pytestmark = pytest.mark.browser
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def test_sign_in_with_the_provider_then_admin_pages_at_phone_width(
    browser: Browser, tmp_path: Path
) -> None:
    port = free_port()
    settings = settings_for(tmp_path, f"http://127.0.0.1:{port}")
    with live_server(create_app(settings, engine=ScriptedEngine(["Hi"]))) as live:
        with live.app.state.session_factory() as session:
            accounts.create_user(
                session=session, username="root", password="root-password-1", admin=True
            )
        with oidc_provider(port, [f"{live.url}/login/oidc/callback"], ACCOUNTS):
            context = browser.new_context(viewport={"width": 390, "height": 844})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "console",
                lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
            )

            page.goto(f"{live.url}/admin/usage")
            expect(page).to_have_url(f"{live.url}/login?next=%2Fadmin%2Fusage")
            page.get_by_role("link", name="Sign in with Corp SSO").click()
            # The provider's own sign-in form (oidc-provider's development interaction).
            page.locator("input[name=login]").fill("dave")
            page.locator("input[name=password]").fill("anything")
            page.locator("button[type=submit]").click()
            expect(page).to_have_url(f"{live.url}/admin/usage")
            expect(page.get_by_role("heading", name="Usage")).to_be_visible()
            assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1

            page.goto(f"{live.url}/admin/groups")
            page.get_by_label("Name").last.fill("Treasury")
            page.get_by_role("button", name="Create group").click()
            expect(page.locator("[data-group=Treasury]")).to_be_visible()
            assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
            assert not errors, errors
            context.close()
