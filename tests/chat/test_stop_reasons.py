"""A stopped answer says what stopped it: the user's Stop, a closed page, a server shutdown, a
restart after a crash, or the account being disabled (stored on the message, shown under it)."""

from __future__ import annotations

import html
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from app.main import create_app
from app.store.models import User
from tests.live import LiveServer, live_server, read_sse
from tests.support.scripted_engine import ScriptedEngine
from tests.support.web import ADMIN_NAME, ADMIN_PASSWORD, Browserless, signed_in_client

STREAM_RE = re.compile(r'sse-connect="/c/([0-9a-f]+)/messages/(\d+)/stream"')
NOTE_RE = re.compile(r'data-stop-reason="(\w+)".*?<div class="note">([^<]*)</div>', re.S)


def stored(server: LiveServer, message_id: int) -> tuple[str, str | None]:
    path = Path(server.app.state.settings.data_dir) / "teller.db"
    deadline = time.monotonic() + 20
    while True:
        with sqlite3.connect(path) as connection:
            status, reason = connection.execute(
                "SELECT status, stop_reason FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
        if status not in ("pending", "streaming") or time.monotonic() > deadline:
            return status, reason
        time.sleep(0.05)


def stop_after_tokens(
    client: Browserless, question: str, stop: Callable[[str, int], None], *, keep_reading: bool
) -> tuple[str, int]:
    """Start an answer, call `stop(conversation, message_id)` once 3 tokens came, and read on
    (or hang up); the conversation id and message id."""
    page = client.post("/c", {"content": question}, follow_redirects=True)
    conversation, message_id = STREAM_RE.search(page.text).groups()
    url = f"/c/{conversation}/messages/{message_id}/stream"
    with client.http.stream("GET", url) as response:
        tokens = 0
        for event, _ in read_sse(response):
            tokens += event == "token"
            if tokens == 3 and event == "token":
                stop(conversation, int(message_id))
                if not keep_reading:
                    break
    return conversation, int(message_id)


def note(client: Browserless, conversation: str) -> tuple[str, str]:
    reason, text = NOTE_RE.search(client.page(f"/c/{conversation}").text).groups()
    return reason, html.unescape(text)


def test_each_way_an_answer_stops_is_told_apart(make_settings) -> None:  # noqa: ANN001
    settings = make_settings()
    engine = ScriptedEngine([f" word{i}" for i in range(400)], delay=0.03)
    with live_server(create_app(settings, engine=engine)) as server:
        admin = signed_in_client(server, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
        alice = signed_in_client(server, "alice", "alice-password-1")
        streams = server.app.state.streams

        def press_stop(conversation: str, message_id: int) -> None:
            assert alice.post(f"/c/{conversation}/messages/{message_id}/stop").status_code == 204

        by_user, message = stop_after_tokens(alice, "Stop me", press_stop, keep_reading=True)
        assert stored(server, message) == ("stopped", "user")
        assert note(alice, by_user) == ("user", "Stopped — partial answer.")

        def nothing(conversation: str, message_id: int) -> None:
            return None

        closed, message = stop_after_tokens(alice, "Hang up", nothing, keep_reading=False)
        assert stored(server, message) == ("stopped", "disconnect")
        assert note(alice, closed)[1].startswith("Cut off: the page was closed")

        def shut_down(conversation: str, message_id: int) -> None:
            streams.stop_all()  # what SIGTERM does (app/ops/serving.py) before the lifespan ends

        by_shutdown, message = stop_after_tokens(alice, "Shut down", shut_down, keep_reading=True)
        assert stored(server, message) == ("stopped", "shutdown")
        assert note(alice, by_shutdown) == (
            "shutdown",
            "Cut off by a server shutdown — partial answer.",
        )

        with server.app.state.session_factory() as session:
            alice_id = session.scalar(select(User.id).where(User.username == "alice"))

        def disable(conversation: str, message_id: int) -> None:
            assert admin.post(f"/admin/users/{alice_id}/disable").status_code == 303

        by_disable, message = stop_after_tokens(alice, "Disable me", disable, keep_reading=True)
        assert stored(server, message) == ("stopped", "disabled")
        admin.post(f"/admin/users/{alice_id}/enable")
        alice = signed_in_client(server, "alice", "alice-password-1", create=False)
        assert note(alice, by_disable)[1] == "Stopped: the account was disabled — partial answer."
        # A crash leaves an answer "streaming"; the next start says the restart cut it.
        path = Path(settings.data_dir) / "teller.db"
        with sqlite3.connect(path) as connection:
            connection.execute(
                "UPDATE messages SET status='streaming', stop_reason=NULL WHERE id=?", (message,)
            )
    with live_server(create_app(settings, engine=engine)) as server:
        alice = signed_in_client(server, "alice", "alice-password-1", create=False)
        assert stored(server, message) == ("stopped", "restart")
        assert note(alice, by_disable) == (
            "restart",
            "Cut off by a server restart — partial answer.",
        )
