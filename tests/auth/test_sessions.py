"""Sign-in, sessions and sign-out over a real server, as a browser would use them."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import httpx

from tests.support.web import (
    ADMIN_NAME,
    ADMIN_PASSWORD,
    Browserless,
    create_account,
    sign_in,
    signed_in_client,
)

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def db(server) -> Path:  # noqa: ANN001
    return Path(server.app.state.settings.data_dir) / "teller.db"


def query(server, sql: str, *params: object) -> list[tuple]:  # noqa: ANN001
    with sqlite3.connect(db(server)) as connection:
        return connection.execute(sql, params).fetchall()


def test_first_visit_sets_up_the_first_admin_once(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        browser = Browserless(server.url)
        first = browser.http.get("/", headers={"Accept": "text/html"})
        assert first.status_code == 303 and first.headers["location"] == "/setup"
        browser.page("/setup")
        mismatch = browser.post(
            "/setup", {"username": "root", "password": "root-password-1", "confirm": "other-pass-1"}
        )
        assert mismatch.status_code == 400 and "differ" in mismatch.text
        done = browser.post(
            "/setup",
            {"username": "root", "password": "root-password-1", "confirm": "root-password-1"},
            follow_redirects=True,
        )
        assert done.status_code == 200 and done.url.path == "/"
        assert "root" in done.text and 'href="/admin"' in done.text
        # A second setup (another browser, same form) changes nothing.
        other = Browserless(server.url)
        assert other.http.get("/setup").headers["location"] == "/login"
        other.page("/login")
        again = other.post(
            "/setup",
            {"username": "evil", "password": "evil-password-1", "confirm": "evil-password-1"},
        )
        assert again.status_code == 303 and again.headers["location"] == "/login"
        assert query(server, "SELECT username, role FROM users") == [("root", "admin")]


def test_sign_in_cookie_is_httponly_samesite_and_stored_hashed(scripted_server) -> None:  # noqa: ANN001
    with scripted_server(cookie_secure=True) as server:
        create_account(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        browser = Browserless(server.url)
        browser.page("/login")
        # The CSRF cookie is Secure too: sent back as a browser behind a TLS proxy would.
        response = httpx.post(
            f"{server.url}/login",
            data={"username": ADMIN_NAME, "password": ADMIN_PASSWORD, "csrf_token": browser.csrf},
            headers={"Cookie": f"teller_csrf={browser.http.cookies['teller_csrf']}"},
        )
        assert response.status_code == 303
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("teller_session=")
        for flag in ("HttpOnly", "SameSite=lax", "Secure", "Path=/"):
            assert flag.lower() in cookie.lower()
        token = cookie.split(";")[0].split("=", 1)[1]
        stored = [row[0] for row in query(server, "SELECT id FROM auth_sessions")]
        assert len(stored) == 1 and token not in stored and len(stored[0]) == 64


def test_wrong_password_and_unknown_user_get_the_same_answer(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        create_account(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        browser = Browserless(server.url)
        browser.page("/login")
        wrong = browser.post("/login", {"username": ADMIN_NAME, "password": "nope-nope-1"})
        unknown = browser.post("/login", {"username": "ghost", "password": "nope-nope-1"})
        assert wrong.status_code == unknown.status_code == 401
        assert "Wrong user name or password." in wrong.text and "Wrong user name" in unknown.text
        assert "teller_session" not in wrong.headers.get("set-cookie", "")
        failed = query(
            server, "SELECT actor_name, ip FROM audit_records WHERE action='auth.sign_in_failed'"
        )
        assert failed == [(ADMIN_NAME, "127.0.0.1"), ("ghost", "127.0.0.1")]


def test_login_throttling_after_repeated_failures(scripted_server) -> None:  # noqa: ANN001
    with scripted_server(login_max_failures=3) as server:
        create_account(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        create_account(server, "other", "other-password-1")
        browser = Browserless(server.url)
        browser.page("/login")
        for _ in range(3):
            bad = browser.post("/login", {"username": ADMIN_NAME, "password": "guess-guess-1"})
            assert bad.status_code == 401
        # Now even the right password is refused, with a wait.
        locked = browser.post("/login", {"username": ADMIN_NAME, "password": ADMIN_PASSWORD})
        assert locked.status_code == 429
        wait = int(locked.headers["Retry-After"])
        assert 0 < wait <= 15 * 60
        assert "Too many failed sign-ins" in locked.text
        assert "teller_session" not in locked.headers.get("set-cookie", "")
        # Another account is not locked by it.
        assert sign_in(Browserless(server.url), "other", "other-password-1").url.path == "/"
        # After the window, sign-in works again (age the failures instead of waiting).
        with sqlite3.connect(db(server)) as connection:
            connection.execute(
                "UPDATE audit_records SET created_at = datetime(created_at, '-16 minutes')"
            )
        # (aging rows breaks the chain on purpose; the throttle reads the times only)
        assert sign_in(Browserless(server.url), ADMIN_NAME, ADMIN_PASSWORD).url.path == "/"


def test_sessions_survive_a_restart(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        cookies = alice.http.cookies
        account = alice.page("/account")
        assert account.status_code == 200
        assert account.headers["cache-control"] == "no-store", "private pages are never cached"
    with scripted_server() as restarted:
        again = httpx.Client(base_url=restarted.url, cookies=cookies)
        page = again.get("/account")
        assert page.status_code == 200 and "alice" in page.text


def test_disabling_a_user_ends_their_sessions_at_once(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        bob = signed_in_client(server, "bob", "bob-password-12")
        bob_phone = signed_in_client(server, "bob", "bob-password-12", create=False)
        assert bob.page("/").status_code == 200
        [(bob_id,)] = query(server, "SELECT id FROM users WHERE username='bob'")
        done = admin.post(f"/admin/users/{bob_id}/disable", follow_redirects=True)
        assert done.status_code == 200 and "User disabled" in done.text
        for session in (bob, bob_phone):
            assert session.http.get("/").status_code == 401
            assert session.http.get("/", headers={"Accept": "text/html"}).status_code == 303
        assert query(server, "SELECT count(*) FROM auth_sessions WHERE user_id=?", bob_id) == [(0,)]
        refused = Browserless(server.url)
        refused.page("/login")
        answer = refused.post("/login", {"username": "bob", "password": "bob-password-12"})
        assert answer.status_code == 401
        admin.post(f"/admin/users/{bob_id}/enable")
        assert sign_in(Browserless(server.url), "bob", "bob-password-12").url.path == "/"


def test_disabled_flag_set_outside_the_app_takes_effect_on_the_next_request(
    scripted_server,  # noqa: ANN001
) -> None:
    with scripted_server() as server:
        bob = signed_in_client(server, "bob", "bob-password-12")
        with sqlite3.connect(db(server)) as connection:
            connection.execute("UPDATE users SET disabled = 1 WHERE username = 'bob'")
        assert bob.http.get("/").status_code == 401


def test_sign_out_ends_the_session_for_good(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        stolen = dict(alice.http.cookies)
        out = alice.post("/logout")
        assert out.status_code == 303 and out.headers["location"] == "/login"
        replay = httpx.Client(base_url=server.url, cookies=stolen)
        assert replay.get("/").status_code == 401


def test_expired_sessions_are_refused(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        with sqlite3.connect(db(server)) as connection:
            connection.execute("UPDATE auth_sessions SET expires_at = '2000-01-01 00:00:00'")
        assert alice.http.get("/").status_code == 401


def test_sessions_end_after_thirty_days_however_active(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        with sqlite3.connect(db(server)) as connection:
            connection.execute("UPDATE auth_sessions SET created_at = datetime('now', '-29 days')")
        assert alice.http.get("/").status_code == 200
        with sqlite3.connect(db(server)) as connection:
            connection.execute("UPDATE auth_sessions SET created_at = datetime('now', '-31 days')")
        assert alice.http.get("/").status_code == 401


def test_password_change_ends_other_sessions_and_keeps_this_one(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        laptop = signed_in_client(server, "alice", "alice-password-1")
        phone = signed_in_client(server, "alice", "alice-password-1", create=False)
        wrong = laptop.post(
            "/account/password",
            {"current": "not-it-at-all", "password": "new-password-1", "confirm": "new-password-1"},
        )
        assert wrong.status_code == 400 and "current password is wrong" in wrong.text
        short = laptop.post(
            "/account/password",
            {"current": "alice-password-1", "password": "short", "confirm": "short"},
        )
        assert short.status_code == 400 and "at least 8" in short.text
        done = laptop.post(
            "/account/password",
            {
                "current": "alice-password-1",
                "password": "new-password-1",
                "confirm": "new-password-1",
            },
            follow_redirects=True,
        )
        assert done.status_code == 200 and "Password changed" in done.text
        assert phone.http.get("/").status_code == 401
        assert laptop.page("/").status_code == 200
        fresh = Browserless(server.url)
        assert sign_in(fresh, "alice", "alice-password-1").url.path == "/login"
        assert sign_in(Browserless(server.url), "alice", "new-password-1").url.path == "/"


def test_next_parameter_never_leaves_the_site(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        create_account(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        for target, expected in (
            ("/account", "/account"),
            ("//evil.example/x", "/"),
            ("https://evil.example/", "/"),
            ("/\\evil.example", "/"),
        ):
            browser = Browserless(server.url)
            browser.page("/login")
            response = browser.post(
                "/login", {"username": ADMIN_NAME, "password": ADMIN_PASSWORD, "next": target}
            )
            assert response.status_code == 303
            assert response.headers["location"] == expected
