"""A disabled account's running answer stops and is stored as `stopped`: at once when an admin
disables it on the page, within a checkpoint when `teller users disable` does (another process,
so the server learns it from the database)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from app.answers import lifecycle
from app.auth import service as accounts
from tests.live import LiveServer, read_sse
from tests.support.web import ADMIN_NAME, ADMIN_PASSWORD, signed_in_client

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')
WORDS = 400


def disable_from_the_cli(server: LiveServer, username: str) -> None:
    """What `teller users disable NAME` runs: the database changes, nothing in the server."""
    with server.app.state.session_factory() as session:
        user = accounts.get_user(session=session, username=username)
        accounts.set_disabled(session=session, user=user, disabled=True, actor_id=None)


def disable_from_the_admin_page(server: LiveServer, username: str) -> None:
    admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
    with server.app.state.session_factory() as session:
        user_id = accounts.get_user(session=session, username=username).id
    admin.page("/admin/users")
    assert admin.post(f"/admin/users/{user_id}/disable").status_code == 303


@pytest.mark.parametrize("disable", [disable_from_the_cli, disable_from_the_admin_page])
def test_disabling_an_account_stops_its_running_answer(
    scripted_server,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
    disable,  # noqa: ANN001
) -> None:
    monkeypatch.setattr(lifecycle, "OWNER_CHECK_SECONDS", 0.05)
    with scripted_server(chunks=["word "] * WORDS, delay=0.02) as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        page = alice.post("/c", {"content": "A long one"}, follow_redirects=True)
        stream_url = STREAM_RE.search(page.text).group(1)
        tokens, done = 0, ""
        with alice.http.stream("GET", stream_url) as response:
            for event, data in read_sse(response):
                tokens += event == "token"
                if tokens == 3 and event == "token":
                    disable(server, "alice")
                if event == "done":
                    done = data
                    break
        assert 'data-status="stopped"' in done
        assert tokens < WORDS / 2, "the answer ran on after its owner was disabled"
        db = Path(server.app.state.settings.data_dir) / "teller.db"
        with sqlite3.connect(db) as connection:
            [(status,)] = connection.execute(
                "SELECT status FROM messages WHERE role='assistant'"
            ).fetchall()
        assert status == "stopped"
        assert len(server.app.state.streams) == 0
