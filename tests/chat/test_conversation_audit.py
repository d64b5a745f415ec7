"""Renaming and deleting a conversation leave audit rows saying who did it and to what."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from app.audit import service as audit
from app.store.models import Conversation
from tests.live import LiveServer
from tests.support.web import signed_in_client


def audit_rows(server: LiveServer, action: str) -> list[tuple[str, dict]]:
    path = Path(server.app.state.settings.data_dir) / "teller.db"
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT actor_name, details FROM audit_records WHERE action=? ORDER BY id", (action,)
        ).fetchall()
    return [(actor, json.loads(details)) for actor, details in rows]


def test_rename_and_delete_are_audited(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        page = alice.post("/c", {"content": "Covenants of ACME"}, follow_redirects=True)
        conversation = page.url.path.rsplit("/", 1)[1]

        assert alice.post(f"/c/{conversation}/rename", {"title": "  ACME   review "}).is_redirect
        assert audit_rows(server, "chat.conversation_renamed") == [
            (
                "alice",
                {
                    "conversation_id": conversation,
                    "old_title": "Covenants of ACME",
                    "title": "ACME review",
                    "ip": "127.0.0.1",  # every record written for a request has its address
                },
            )
        ]
        # An empty title is refused, changes nothing and audits nothing.
        assert alice.post(f"/c/{conversation}/rename", {"title": "   "}).status_code == 400
        assert len(audit_rows(server, "chat.conversation_renamed")) == 1

        assert alice.post(f"/c/{conversation}/delete").is_redirect
        assert audit_rows(server, audit.CONVERSATION_DELETED) == [
            (
                "alice",
                {
                    "conversation_id": conversation,
                    "title": "ACME review",
                    "messages": 2,
                    "ip": "127.0.0.1",
                },
            )
        ]
        with server.app.state.session_factory() as session:
            assert session.get(Conversation, conversation) is None
