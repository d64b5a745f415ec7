"""First run, sign-in and sign-out in chromium: the forms work under the strict CSP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from tests.support.web import browser_sign_in

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


def test_setup_then_sign_out_and_back_in(browser: Browser, scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        context = browser.new_context()
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
        )

        page.goto(server.url + "/")
        expect(page).to_have_url(server.url + "/setup")
        page.get_by_label("Administrator user name").fill("root")
        page.get_by_label("Password (at least 8 characters)").fill("root-password-1")
        page.get_by_label("Password again").fill("root-password-1")
        page.get_by_role("button", name="Create administrator").click()
        expect(page).to_have_url(server.url + "/")
        expect(page.locator(".account-links")).to_contain_text("root")

        page.get_by_role("button", name="Sign out").click()
        expect(page).to_have_url(server.url + "/login")
        page.goto(server.url + "/account")
        expect(page).to_have_url(server.url + "/login?next=%2Faccount")

        page.get_by_label("User name").fill("root")
        page.get_by_label("Password").fill("wrong-password")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")

        browser_sign_in(page, server.url, "root", "root-password-1")
        page.goto(server.url + "/admin/users")
        expect(page.locator('tr[data-user="root"]')).to_contain_text("admin")
        context.close()
        assert not errors, errors
