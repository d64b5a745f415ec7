"""Retention: old conversations go, audit records stay (or are cut with the chain re-anchored)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from app.audit import service as audit
from app.audit.retention import run_retention
from tests.web.conftest import signed_in_client


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


def age(db: Path, sql: str) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute(sql)


def test_old_conversations_are_deleted_at_start_and_audit_stays(scripted_server) -> None:  # noqa: ANN001
    with scripted_server() as server:
        alice = signed_in_client(server, "alice", "alice-password-1")
        alice.post("/c", {"content": "old question"})
        alice.post("/c", {"content": "new question"})
        db = Path(server.app.state.settings.data_dir) / "teller.db"
    age(
        db,
        "UPDATE conversations SET updated_at = datetime('now', '-40 days') "
        "WHERE title = 'old question'",
    )
    with scripted_server(retention_days=30) as server:
        assert rows(db, "SELECT title FROM conversations") == [("new question",)]
        assert rows(db, "SELECT count(*) FROM messages") == [(2,)]
        prompts = rows(db, "SELECT count(*) FROM audit_records WHERE action='chat.prompt'")
        assert prompts == [(2,)], "the audit trail keeps the deleted conversation's prompt"
        [(details,)] = rows(db, "SELECT details FROM audit_records WHERE action='retention.purged'")
        assert '"conversations":1' in details
        with server.app.state.session_factory() as session:
            assert audit.verify_chain(session=session).ok


def test_audit_retention_cuts_the_chain_and_it_still_verifies(
    session_factory,  # noqa: ANN001
    db_path: Path,
    make_settings,  # noqa: ANN001
) -> None:
    with session_factory() as session:
        for i in range(10):
            audit.record_event(session=session, action=audit.API_CALL, details={"i": i})
    age(db_path, "UPDATE audit_records SET created_at = datetime('now', '-100 days') WHERE id <= 6")
    settings = make_settings(data_dir=db_path.parent, audit_retention_days=90)
    done = run_retention(settings=settings, session_factory=session_factory)
    assert done["audit"] == 6
    # Aging rows by hand broke their hashes; exactly those rows were purged, so the rest verify.
    assert [r[0] for r in rows(db_path, "SELECT id FROM audit_records ORDER BY id")] == [
        7,
        8,
        9,
        10,
        11,
    ]
    with session_factory() as session:
        report = audit.verify_chain(session=session)
    assert report.ok, report.problems
    # Deleting the first record after the cut is still caught.
    age(db_path, "DELETE FROM audit_records WHERE id = 7")
    with session_factory() as session:
        assert not audit.verify_chain(session=session).ok
