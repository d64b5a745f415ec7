"""Per-user limits: messages per minute and answers generating at once → 429 + Retry-After."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from tests.live import read_sse
from tests.support.web import signed_in_client

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')


def count_user_messages(server) -> int:  # noqa: ANN001
    path = Path(server.app.state.settings.data_dir) / "teller.db"
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT count(*) FROM messages WHERE role='user'").fetchone()[0]


def test_message_rate_limit_per_user(scripted_server) -> None:  # noqa: ANN001
    with scripted_server(messages_per_minute=2) as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        bob = signed_in_client(server, "bob", "bob-password-12")
        assert alice.post("/c", {"content": "one"}).status_code == 303
        assert alice.post("/c", {"content": "two"}).status_code == 303
        refused = alice.post("/c", {"content": "three"})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "2 messages in the last minute" in refused.text
        htmx = alice.http.post(
            "/c",
            data={"content": "four"},
            headers={"X-CSRF-Token": alice.csrf, "HX-Request": "true", "Accept": "text/html"},
        )
        assert htmx.status_code == 429
        assert htmx.headers["HX-Retarget"] == "#composer-error"
        assert count_user_messages(server) == 2
        path = Path(server.app.state.settings.data_dir) / "teller.db"
        with sqlite3.connect(path) as connection:
            limited = connection.execute(
                "SELECT actor_name FROM audit_records WHERE action = 'limits.rate_limited'"
            ).fetchall()
        assert limited == [("alice",), ("alice",)]
        # Bob has his own allowance.
        assert bob.post("/c", {"content": "bob's first"}).status_code == 303


def test_concurrent_streams_per_user(scripted_server) -> None:  # noqa: ANN001
    chunks = [f"w{i} " for i in range(60)]
    with scripted_server(chunks=chunks, delay=0.02, max_concurrent_streams=1) as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        streams = []
        for question in ("first", "second"):
            page = alice.post("/c", {"content": question}, follow_redirects=True)
            streams.append(STREAM_RE.search(page.text).group(1))
        with alice.http.stream("GET", streams[0]) as first:
            events = read_sse(first)
            assert "token" in (event for event, _ in events)  # the first is generating
            busy = alice.http.get(streams[1])
            assert busy.status_code == 429
            assert int(busy.headers["Retry-After"]) >= 1
            refused = alice.post("/c", {"content": "third"})
            assert refused.status_code == 429
            assert "1 answer being written" in refused.text
            for event, _ in events:
                if event == "done":
                    break
        # The slot is free again once the first answer is done.
        with alice.http.stream("GET", streams[1]) as second:
            assert second.status_code == 200
            assert [e for e, _ in read_sse(second)][-1] == "done"
        assert alice.post("/c", {"content": "third"}).status_code == 303
