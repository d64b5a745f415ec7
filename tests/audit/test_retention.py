"""Retention: old conversations go, audit records stay (or are cut with the chain re-anchored),
and a cut made by hand is told apart from one retention made."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from app.audit import service as audit
from app.audit.retention import run_retention
from app.audit.verify import Anchor, verify_chain
from app.store.models import AuditHead, AuditRecord, utcnow
from tests.support.web import signed_in_client


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql).fetchall()


def age(db: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute(sql, params)


def fill(session_factory, count: int = 10) -> dict[int, str]:  # noqa: ANN001
    """`count` records; returns every record's hash by id."""
    with session_factory() as session:
        for i in range(count):
            audit.record_event(session=session, action=audit.API_CALL, details={"i": i})
        return {r.id: r.hash for r in session.execute(select(AuditRecord.id, AuditRecord.hash))}


def problems(session_factory, retention_days: int, anchors=()) -> list[str]:  # noqa: ANN001
    with session_factory() as session:
        return verify_chain(
            session=session, retention_days=retention_days, anchors=list(anchors)
        ).problems


def fake_cut(db: Path, base_id: int, base_hash: str) -> None:
    """The attack: delete the oldest records and move the head's base as a purge would."""
    age(db, "DELETE FROM audit_records WHERE id <= ?", base_id)
    age(db, "UPDATE audit_head SET base_id = ?, base_hash = ?", base_id, base_hash)


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
            assert verify_chain(session=session, retention_days=0).ok


def test_audit_retention_cuts_the_chain_names_the_cut_and_still_verifies(
    session_factory,  # noqa: ANN001
    db_path: Path,
    make_settings,  # noqa: ANN001
) -> None:
    hashes = fill(session_factory)
    age(db_path, "UPDATE audit_records SET created_at = datetime('now', '-100 days') WHERE id <= 6")
    settings = make_settings(data_dir=db_path.parent, audit_retention_days=90)
    done = run_retention(settings=settings, session_factory=session_factory)
    assert done["audit"] == 6
    # Aging rows by hand broke their hashes; exactly those rows were purged, so the rest verify.
    kept = rows(db_path, "SELECT id, action, details FROM audit_records ORDER BY id")
    assert [(i, action) for i, action, _ in kept] == [
        (7, "api.call"),
        (8, "api.call"),
        (9, "api.call"),
        (10, "api.call"),
        (11, "audit.purged"),
        (12, "retention.purged"),
    ]
    cut = json.loads(kept[4][2])
    assert (cut["base_id"], cut["base_hash"], cut["records"]) == (6, hashes[6], 6)
    assert (
        cut["retention_days"] == 90 and cut["cutoff"] < (utcnow() - timedelta(days=89)).isoformat()
    )
    assert problems(session_factory, 90) == []
    # An anchor taken back when the cut records were written is covered by the purge.
    assert (
        problems(session_factory, 90, [Anchor(3, hashes[3], utcnow() - timedelta(days=95))]) == []
    )
    assert problems(session_factory, 90, [Anchor(6, hashes[6])]) == []

    [off] = problems(session_factory, 0)
    assert "records 1..6 are gone, but audit retention is off" in off
    [shorter] = problems(session_factory, 180)
    assert "kept only 90 days of records but TELLER_AUDIT_RETENTION_DAYS is 180" in shorter
    # Deleting the first record after the cut is still caught.
    age(db_path, "DELETE FROM audit_records WHERE id = 7")
    assert problems(session_factory, 90)


@pytest.mark.parametrize("retention_days", [0, 90])
def test_deleting_the_oldest_records_and_moving_the_base_is_caught(
    session_factory,  # noqa: ANN001
    db_path: Path,
    retention_days: int,
) -> None:
    """The attack run's forgery: with the head's base moved, the chain used to verify."""
    hashes = fill(session_factory)
    fake_cut(db_path, 4, hashes[4])
    found = problems(session_factory, retention_days)
    assert found and "records 1..4 are gone" in found[0]
    assert "no audit.purged record in the chain names that cut" in found[0]
    anchored = problems(session_factory, retention_days, [Anchor(2, hashes[2])])
    assert "anchored record 2 was cut without a valid audit.purged record" in anchored


def test_a_forged_purge_record_is_caught_by_the_setting_or_by_the_head_log(
    session_factory,  # noqa: ANN001
    db_path: Path,
) -> None:
    """With database access one can also append a purge record of one's own at the end. It
    must claim at least TELLER_AUDIT_RETENTION_DAYS, and a head exported after the records it
    cut were written shows they were too young for that."""
    started = utcnow()
    hashes = fill(session_factory)
    fake_cut(db_path, 6, hashes[6])

    def forge(days: int) -> None:
        with session_factory() as session, audit.appending(session) as head:
            audit.append(
                session=session,
                head=head,
                action=audit.AUDIT_PURGED,
                details={
                    "base_id": 6,
                    "base_hash": hashes[6],
                    "cutoff": (utcnow() - timedelta(days=days)).isoformat(),
                    "retention_days": days,
                    "records": 6,
                },
            )

    forge(days=1)
    assert "kept only 1 days of records but TELLER_AUDIT_RETENTION_DAYS is 30" in " ".join(
        problems(session_factory, 30)
    )
    forge(days=30)
    assert problems(session_factory, 30) == [], "the database alone cannot tell (see verify.py)"
    exported_today = Anchor(3, hashes[3], started)
    [caught] = problems(session_factory, 30, [exported_today])
    assert "records written after anchor 3 was taken" in caught
    assert "the cut was not retention's" in caught


def test_an_earlier_purge_with_a_shorter_retention_bounds_the_anchor_times(
    session_factory,  # noqa: ANN001
    db_path: Path,
) -> None:
    """Retention lengthened from 30 to 90 days: the 30-day purge still in the chain cut records
    younger than the 90-day one's cut-off, and anchors taken between are no forgery."""
    hashes = fill(session_factory, 6)
    fake_cut(db_path, 3, hashes[3])  # what the two purges deleted
    with session_factory() as session:
        for base, days in ((2, 30), (3, 90)):
            with audit.appending(session) as head:
                audit.append(
                    session=session,
                    head=head,
                    action=audit.AUDIT_PURGED,
                    details={
                        "base_id": base,
                        "base_hash": hashes[base],
                        "cutoff": (utcnow() - timedelta(days=days)).isoformat(),
                        "retention_days": days,
                        "records": 1,
                    },
                )
    between = Anchor(1, hashes[1], utcnow() - timedelta(days=45))
    assert problems(session_factory, 90, [between]) == []
    too_late = Anchor(1, hashes[1], utcnow() - timedelta(days=20))
    assert "the cut was not retention's" in " ".join(problems(session_factory, 90, [too_late]))


def test_a_moved_cut_point_after_a_real_purge_is_caught(
    session_factory,  # noqa: ANN001
    db_path: Path,
    make_settings,  # noqa: ANN001
) -> None:
    hashes = fill(session_factory)
    age(db_path, "UPDATE audit_records SET created_at = datetime('now', '-100 days') WHERE id <= 3")
    settings = make_settings(data_dir=db_path.parent, audit_retention_days=90)
    assert run_retention(settings=settings, session_factory=session_factory)["audit"] == 3
    fake_cut(db_path, 8, hashes[8])
    [moved] = problems(session_factory, 90)
    assert (
        "starts after record 8, but the newest audit.purged record (11) cut it after record 3"
        in moved
    )
    with session_factory() as session:
        assert session.get(AuditHead, audit.HEAD_ID).base_id == 8
