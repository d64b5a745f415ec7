"""The audit chain: every edit or deletion is found; concurrent writers never fork it."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import event, select

from app.audit import service as audit
from app.audit.verify import verify_chain
from app.auth.service import create_user
from app.store.identity_models import UsageRecord
from app.store.models import AuditRecord
from tests.audit.writer import append_from_process
from tests.support.db import tamper


def fill(session_factory, count: int = 6) -> None:  # noqa: ANN001
    with session_factory() as session:
        for i in range(count):
            audit.record_event(
                session=session,
                action=audit.CHAT_PROMPT,
                details={"conversation_id": f"c{i}", "text": f"question {i}", "username": "ann"},
            )


def problems(session_factory) -> list[str]:  # noqa: ANN001
    with session_factory() as session:
        return verify_chain(session=session, retention_days=0).problems


def test_intact_chain_verifies_and_rows_link(session_factory) -> None:  # noqa: ANN001
    fill(session_factory)
    assert problems(session_factory) == []
    with session_factory() as session:
        rows = list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)))
    assert [r.id for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(rows, rows[1:], strict=False))
    assert rows[2].conversation_id == "c2" and rows[2].actor_name == "ann"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ('UPDATE audit_records SET details = \'{"text":"edited"}\' WHERE id = 3', "record 3 was"),
        ("UPDATE audit_records SET actor_name = 'mallory' WHERE id = 1", "record 1 was"),
        ("UPDATE audit_records SET created_at = '2020-01-01 00:00:00' WHERE id = 4", "record 4"),
        ("UPDATE audit_records SET action = 'auth.sign_in' WHERE id = 6", "record 6 was"),
        ("DELETE FROM audit_records WHERE id = 3", "missing"),
        ("DELETE FROM audit_records WHERE id = 1", "missing"),
        ("DELETE FROM audit_records WHERE id = 6", "newest records"),
        ("DELETE FROM audit_records WHERE id >= 5", "newest records"),
        ("DELETE FROM audit_records", "newest records"),
        ("UPDATE audit_records SET hash = prev_hash WHERE id = 2", "record 2"),
    ],
)
def test_any_edit_or_deletion_is_detected(
    session_factory,  # noqa: ANN001
    db_path: Path,
    sql: str,
    expected: str,
) -> None:
    fill(session_factory)
    tamper(db_path, sql)
    found = problems(session_factory)
    assert found and any(expected in p for p in found), found


def test_a_rewritten_row_with_a_recomputed_hash_is_still_detected(
    session_factory,  # noqa: ANN001
    db_path: Path,
) -> None:
    fill(session_factory)
    with session_factory() as session:
        row = session.get(AuditRecord, 3)
        row.details = '{"text":"nothing to see"}'
        new_hash = audit.compute_hash(row)
    tamper(db_path, "UPDATE audit_records SET details=?, hash=? WHERE id=3", row.details, new_hash)
    assert any("record 4 does not link" in p for p in problems(session_factory))


def test_concurrent_threads_never_fork_the_chain(session_factory) -> None:  # noqa: ANN001
    def writer(n: int) -> None:
        for i in range(25):
            with session_factory() as session:
                audit.record_event(session=session, action=audit.API_CALL, details={"w": n, "i": i})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with session_factory() as session:
        report = verify_chain(session=session, retention_days=0)
    assert report.ok, report.problems
    assert report.checked == report.head_id == 150


def test_concurrent_processes_never_fork_the_chain(session_factory, db_path: Path) -> None:  # noqa: ANN001
    """Separate processes share no lock in memory: the database lock must serialize them."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=append_from_process, args=(f"sqlite:///{db_path}", n))
        for n in range(3)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    with session_factory() as session:
        report = verify_chain(session=session, retention_days=0)
    assert report.ok, report.problems
    assert report.checked == 60


def _held_writers(
    session_factory,  # noqa: ANN001
    details: list[dict],
    with_rows: list[list[object]] | None = None,
) -> dict[int, Exception]:
    """One thread per row, all queued behind the held append lock, then let go together."""
    database = session_factory.kw["bind"]
    errors: dict[int, Exception] = {}

    def writer(n: int) -> None:
        with session_factory() as session:
            try:
                audit.record_event(
                    session=session,
                    action=audit.API_CALL,
                    details=details[n],
                    with_rows=with_rows[n] if with_rows else (),
                )
            except Exception as exc:  # noqa: BLE001 - the test looks at which row failed
                errors[n] = exc

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(len(details))]
    with audit._append_lock:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(audit._queues.get(database, [])) < len(details):
            assert time.monotonic() < deadline, "the writers never queued"
            time.sleep(0.01)
    for thread in threads:
        thread.join(30)
    return errors


def test_rows_waiting_for_the_lock_are_written_in_one_transaction(session_factory) -> None:  # noqa: ANN001
    fill(session_factory, 2)
    commits: list[int] = []
    event.listen(session_factory.kw["bind"], "commit", lambda _connection: commits.append(1))
    assert _held_writers(session_factory, [{"n": n} for n in range(8)]) == {}
    assert len(commits) == 1
    with session_factory() as session:
        report = verify_chain(session=session, retention_days=0)
        rows = list(session.scalars(select(AuditRecord).where(AuditRecord.id > 2)))
    assert report.ok and report.checked == 10, report.problems
    assert sorted(json.loads(r.details)["n"] for r in rows) == list(range(8))
    assert all(r.created_at >= rows[0].created_at for r in rows)


def test_a_row_the_database_refuses_fails_alone(session_factory) -> None:  # noqa: ANN001
    loop: dict = {}
    loop["itself"] = loop  # JSON cannot write it
    details = [{"n": n} for n in range(6)]
    details[3] = loop
    errors = _held_writers(session_factory, details)
    assert list(errors) == [3] and isinstance(errors[3], ValueError)
    with session_factory() as session:
        report = verify_chain(session=session, retention_days=0)
        written = [json.loads(r.details)["n"] for r in session.scalars(select(AuditRecord))]
    assert report.ok and report.checked == 5, report.problems
    assert sorted(written) == [0, 1, 2, 4, 5]


def test_an_actor_is_named_by_their_username_now(session_factory) -> None:  # noqa: ANN001
    with session_factory() as session:
        ann = create_user(session=session, username="ann", password="ann-password-12")
        ann.username = "ann.b"  # renamed in the caller's own pending changes
        audit.record_event(session=session, action=audit.API_CALL, actor_id=ann.id)
        audit.record_event(
            session=session, action=audit.SIGN_IN_FAILED, details={"username": "nobody"}
        )
        gone = audit.record_event(
            session=session, action=audit.API_CALL, actor_id=999, details={"username": "old"}
        )
    with session_factory() as session:
        names = [
            r.actor_name for r in session.scalars(select(AuditRecord).order_by(AuditRecord.id))
        ]
    assert names[-3:] == ["ann.b", "nobody", "old"] and gone.actor_id == 999


def test_rows_given_with_a_record_commit_with_it_or_not_at_all(session_factory) -> None:  # noqa: ANN001
    with session_factory() as session:
        ann = create_user(session=session, username="ann", password="ann-password-12")
    loop: dict = {}
    loop["itself"] = loop

    def spent(tokens: int) -> UsageRecord:
        return UsageRecord(
            user_id=ann.id, day=date(2026, 1, 2), surface="api", adapter="base",
            prompt_tokens=tokens, completion_tokens=0,
        )  # fmt: skip

    errors = _held_writers(
        session_factory,
        [{"n": 0}, loop, {"n": 2}],
        with_rows=[[spent(10)], [spent(20)], [spent(30), spent(40)]],
    )
    assert list(errors) == [1]
    with session_factory() as session:
        kept = sorted(session.scalars(select(UsageRecord.prompt_tokens)))
    assert kept == [10, 30, 40]
