"""A conversation is visible only to its owner: everyone else gets 404 on every route."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from tests.live import read_sse
from tests.support.routes import route_table
from tests.support.web import signed_in_client

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')


def test_conversation_routes_are_owner_only(scripted_server) -> None:  # noqa: ANN001
    with scripted_server(chunks=["Private ", "answer."]) as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        bob = signed_in_client(server, "bob", "bob-password-12")
        page = alice.post("/c", {"content": "Alice's secret question"}, follow_redirects=True)
        conversation_id = page.url.path.rsplit("/", 1)[1]
        stream_url = STREAM_RE.search(page.text).group(1)
        message_id = stream_url.split("/")[-2]
        with alice.http.stream("GET", stream_url) as response:
            events = [event for event, _ in read_sse(response)]
        assert events[-1] == "done"

        table = route_table(server.app)
        owned = [(method, path) for method, path, _ in table if "{conversation_id}" in path]
        assert len(owned) >= 6, owned
        problems = []
        for method, path in owned:
            url = path.replace("{conversation_id}", conversation_id).replace(
                "{message_id}", message_id
            )
            response = bob.http.request(
                method,
                url,
                headers={"X-CSRF-Token": bob.csrf},
                data={"title": "pwned", "content": "hi", "adapter": ""},
            )
            if response.status_code != 404:
                problems.append(f"{method} {path}: {response.status_code} for another user")
            assert "secret" not in response.text
        assert not problems, "\n".join(problems)

        assert "Alice&#39;s secret question" not in bob.page("/").text
        db = Path(server.app.state.settings.data_dir) / "teller.db"
        with sqlite3.connect(db) as connection:
            [(title,)] = connection.execute("SELECT title FROM conversations").fetchall()
            messages = connection.execute("SELECT count(*) FROM messages").fetchone()[0]
        assert title == "Alice's secret question" and messages == 2
        # Alice still has everything.
        assert "Alice&#39;s secret question" in alice.page(f"/c/{conversation_id}").text


def test_fixture_clients_have_the_roles_they_claim(client, user_client) -> None:  # noqa: ANN001
    """`client` is an administrator and `user_client()` a plain user (other tests rely on it)."""
    bob = user_client("bob")
    assert client.page("/admin/users").status_code == 200
    assert bob.page("/admin/users").status_code == 403
    assert 'data-user="bob"' in client.page("/admin/users").text
    assert bob.page("/").status_code == 200
