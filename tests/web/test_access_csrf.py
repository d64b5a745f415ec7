"""CSRF: the token is bound to the session, the Origin must be ours, HTMX's header counts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.support.web import Browserless, create_account, signed_in_client


def titles(server) -> list[str]:  # noqa: ANN001
    path = Path(server.app.state.settings.data_dir) / "teller.db"
    with sqlite3.connect(path) as connection:
        return [row[0] for row in connection.execute("SELECT title FROM conversations")]


def test_state_changes_need_this_sessions_token_and_our_origin(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        bob = signed_in_client(server, "bob", "bob-password-12")
        start = alice.post("/c", {"content": "Quarterly numbers"}, follow_redirects=True)
        path = start.url.path
        rename = f"{path}/rename"

        def attempt(**kwargs: object) -> int:
            return alice.http.post(rename, **kwargs).status_code

        assert attempt(data={"title": "no token"}) == 403
        assert attempt(data={"title": "wrong", "csrf_token": "x" * 43}) == 403
        assert attempt(data={"title": "bob's", "csrf_token": bob.csrf}) == 403
        assert attempt(data={"title": "empty", "csrf_token": ""}) == 403
        foreign = {"Origin": "https://evil.example", "X-CSRF-Token": alice.csrf}
        assert attempt(data={"title": "cross-site"}, headers=foreign) == 403
        assert attempt(data={"title": "null origin"}, headers={"Origin": "null"}) == 403
        assert titles(server) == ["Quarterly numbers"]

        # The right token works as a form field, or as HTMX's header with our own Origin.
        assert attempt(data={"title": "Q3", "csrf_token": alice.csrf}) == 303
        htmx = {"X-CSRF-Token": alice.csrf, "HX-Request": "true", "Origin": server.url}
        assert attempt(data={"title": "Q4"}, headers=htmx) == 204
        assert titles(server) == ["Q4"]


def test_the_token_changes_with_the_session(scripted_server) -> None:  # noqa: ANN001
    """A token seen before sign-in (or in an old session) is useless afterwards."""
    with scripted_server() as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        first = alice.csrf
        alice.post("/logout")
        anonymous_token = Browserless(server.url)
        anonymous_token.page("/login")
        assert anonymous_token.csrf not in (first, "")
        again = signed_in_client(server, "alice", "alice-password-1", create=False)
        assert again.csrf not in (first, anonymous_token.csrf)
        response = again.http.post("/c", data={"content": "hi"}, headers={"X-CSRF-Token": first})
        assert response.status_code == 403


def test_login_form_needs_its_token_too(scripted_server) -> None:  # noqa: ANN001
    """No login CSRF: a cross-site page cannot sign a victim into the attacker's account."""
    with scripted_server() as server:
        signed_in_client(server, "mallory", "mallory-password-1")
        victim = Browserless(server.url)
        victim.page("/login")
        forged = victim.http.post(
            "/login", data={"username": "mallory", "password": "mallory-password-1"}
        )
        assert forged.status_code == 403
        assert "teller_session" not in forged.headers.get("set-cookie", "")


@pytest.mark.parametrize("secure", [True, False])
def test_the_csrf_cookie_follows_cookie_secure_like_the_session_cookie(
    scripted_server,  # noqa: ANN001
    secure: bool,
) -> None:
    with scripted_server(cookie_secure=secure) as server:
        create_account(server, "alice", "alice-password-1")
        browser = Browserless(server.url)
        login = browser.page("/login")
        [csrf] = [c for c in login.headers.get_list("set-cookie") if c.startswith("teller_csrf=")]
        assert ("; secure" in csrf.lower()) is secure
        # Sent back as a browser behind a TLS proxy would (this test server speaks plain http).
        signed = httpx.post(
            f"{server.url}/login",
            data={"username": "alice", "password": "alice-password-1", "csrf_token": browser.csrf},
            headers={"Cookie": f"teller_csrf={browser.http.cookies['teller_csrf']}"},
        )
        assert signed.status_code == 303
        [session] = [
            c for c in signed.headers.get_list("set-cookie") if c.startswith("teller_session=")
        ]
        assert ("; secure" in session.lower()) is secure
