"""Whose address a request has: the peer's, unless the peer is a configured proxy.

Served by real uvicorn with the proxy options `teller serve` passes, since that is where
X-Forwarded-For and X-Forwarded-Proto are believed or not.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from app.ops.serving import proxy_options
from tests.live import live_server
from tests.support.scripted_engine import ScriptedEngine
from tests.support.web import Browserless, create_account

FORWARDED = {"X-Forwarded-For": "1.2.3.4", "X-Forwarded-Proto": "https"}


def failed_sign_in(url: str, headers: dict[str, str]) -> httpx.Response:
    """A wrong password sent through a client claiming to be behind a proxy."""
    browser = Browserless(url)
    browser.page("/login")
    return browser.http.post(
        "/login",
        data={"username": "alice", "password": "wrong-guess-1", "csrf_token": browser.csrf},
        headers=headers,
    )


def recorded_addresses(settings) -> list[str | None]:  # noqa: ANN001
    path = Path(settings.data_dir) / "teller.db"
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT ip FROM audit_records WHERE action = 'auth.sign_in_failed' ORDER BY id"
        ).fetchall()
    return [row[0] for row in rows]


@pytest.mark.parametrize(
    ("trusted", "forwarded_for", "recorded", "https"),
    [
        ("", "1.2.3.4", "127.0.0.1", False),  # the default: no proxy is believed
        ("10.0.0.0/8", "1.2.3.4", "127.0.0.1", False),  # a proxy, but not this peer
        ("127.0.0.1", "1.2.3.4", "1.2.3.4", True),  # the configured proxy: its word counts
        ("10.0.0.0/8, 127.0.0.0/8", "5.6.7.8, 10.1.1.1", "5.6.7.8", True),  # a chain of them
        ("127.0.0.1", "<script>", None, True),  # believed, but not an address: not stored
    ],
)
def test_forwarded_headers_count_only_from_trusted_proxies(
    make_settings,  # noqa: ANN001
    trusted: str,
    forwarded_for: str,
    recorded: str | None,
    https: bool,
) -> None:
    settings = make_settings(trusted_proxies=trusted)
    app = create_app(settings, engine=ScriptedEngine())
    with live_server(app, **proxy_options(settings)) as server:
        create_account(server, "alice", "alice-password-1")
        headers = {**FORWARDED, "X-Forwarded-For": forwarded_for}
        refused = failed_sign_in(server.url, headers)
        assert refused.status_code == 401
        assert recorded_addresses(settings) == [recorded]
        # Over "https" (as the proxy says), the cookies are Secure; over http they are not.
        fresh = httpx.get(f"{server.url}/login", headers=headers)
        [csrf] = [c for c in fresh.headers.get_list("set-cookie") if c.startswith("teller_csrf")]
        assert ("; secure" in csrf.lower()) is https


@pytest.mark.parametrize("value", ["*", "proxy.example", "10.0.0.300", "127.0.0.1 10.0.0.1"])
def test_trusted_proxies_must_be_addresses_or_networks(make_settings, value: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="TELLER_TRUSTED_PROXIES"):
        make_settings(trusted_proxies=value)
