"""A new password comes with a choice about API keys (a leaked password may mean leaked keys):
on /account, in an admin's reset and in `teller users passwd`, each choice audited."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import openai
import pytest

from app.auth import service as accounts
from app.cli_common import open_session
from app.config import Settings
from app.keys import service as keys
from tests.support.cli import teller
from tests.support.web import ADMIN_NAME, ADMIN_PASSWORD, signed_in_client


def new_key(server, username: str) -> openai.OpenAI:  # noqa: ANN001
    """A key for `username` (as `teller keys create` makes it) in the real openai client."""
    with server.app.state.session_factory() as session:
        user = accounts.get_user(session=session, username=username)
        secret = keys.create_key(session=session, user=user, name="notebook").secret
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=secret, max_retries=0)


def works(client: openai.OpenAI) -> bool:
    try:
        client.models.list()
    except openai.AuthenticationError:
        return False
    return True


def password_events(data_dir: Path) -> list[tuple[str, dict]]:
    with sqlite3.connect(data_dir / "teller.db") as connection:
        rows = connection.execute(
            "SELECT action, details FROM audit_records WHERE action IN "
            "('auth.password_changed', 'user.password_reset') ORDER BY id"
        ).fetchall()
    return [(action, json.loads(details)) for action, details in rows]


def test_own_password_change_revokes_api_keys_when_asked(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        page = alice.page("/account").text
        assert (
            'name="revoke_keys" type="checkbox" value="1" checked' in page
        )  # offered, on by default
        kept, revoked = new_key(server, "alice"), None
        change = {"current": "alice-password-1", "password": "alice-password-2"}
        done = alice.post("/account/password", {**change, "confirm": "alice-password-2"})
        assert done.status_code == 303  # box unticked: the keys stay
        assert works(kept)
        revoked = new_key(server, "alice")
        change = {"current": "alice-password-2", "password": "alice-password-3"}
        done = alice.post(
            "/account/password",
            {**change, "confirm": "alice-password-3", "revoke_keys": "1"},
            follow_redirects=True,
        )
        assert "your API keys were revoked" in done.text
        assert not works(kept) and not works(revoked)
        events = password_events(Path(server.app.state.settings.data_dir))
        assert [details["api_keys_revoked"] for _, details in events] == [0, 2]
        assert [details["revoke_api_keys"] for _, details in events] == [False, True]


def test_admin_reset_revokes_the_users_keys_when_asked(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        signed_in_client(server, "bob", "bob-password-1").http.close()
        client = new_key(server, "bob")
        page = admin.page("/admin/users").text
        assert 'name="revoke_keys" type="checkbox" value="1" checked' in page
        with server.app.state.session_factory() as session:
            bob_id = accounts.get_user(session=session, username="bob").id
        admin.post(f"/admin/users/{bob_id}/password", {"password": "bob-password-2"})
        assert works(client)
        reset = admin.post(
            f"/admin/users/{bob_id}/password",
            {"password": "bob-password-3", "revoke_keys": "1"},
            follow_redirects=True,
        )
        assert "their API keys were revoked" in reset.text
        assert not works(client)
        events = password_events(Path(server.app.state.settings.data_dir))
        assert [(e, d["revoke_api_keys"], d["api_keys_revoked"]) for e, d in events] == [
            ("user.password_reset", False, 0),
            ("user.password_reset", True, 1),
        ]


def test_cli_passwd_keeps_keys_unless_told_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("TELLER_DATA_DIR", str(data))
    with open_session(Settings()) as session:
        user = accounts.create_user(session=session, username="carol", password="carol-pass-1")
        secret = keys.create_key(session=session, user=user).secret
    kept = teller(data, "users", "passwd", "carol", "--password-stdin", stdin="carol-pass-2\n")
    assert kept.returncode == 0, kept.stderr
    assert "1 API key still works" in kept.stdout and "--revoke-keys" in kept.stdout
    revoked = teller(
        data,
        "users",
        "passwd",
        "carol",
        "--password-stdin",
        "--revoke-keys",
        stdin="carol-pass-3\n",
    )
    assert revoked.returncode == 0, revoked.stderr
    assert "1 API key revoked" in revoked.stdout
    with open_session(Settings()) as session:
        assert keys.authenticate(session=session, secret=secret) is None
    assert [d["revoke_api_keys"] for _, d in password_events(data)] == [False, True]
