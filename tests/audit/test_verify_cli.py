"""`teller audit verify` on a real data dir: exit 0 when intact, 2 and one line when not."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import select

from app.audit import service as audit
from app.store.models import AuditHead, AuditRecord
from tests.support.cli import teller, teller_process
from tests.support.db import tamper


def test_verify_passes_then_names_the_tampered_record(session_factory, db_path: Path) -> None:  # noqa: ANN001
    with session_factory() as session:
        for i in range(5):
            audit.record_event(session=session, action=audit.CHAT_ANSWER, details={"i": i})
    ok = teller_process(db_path.parent, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "intact: 5 records" in ok.stdout

    tamper(db_path, "UPDATE audit_records SET details = '{\"i\": 99}' WHERE id = 2")
    broken = teller_process(db_path.parent, "audit", "verify")
    assert broken.returncode == 2
    assert (
        broken.stderr.strip()
        .splitlines()[-1]
        .startswith("teller: audit chain broken: record 2 was modified")
    )


def test_verify_detects_a_deleted_last_record(session_factory, db_path: Path) -> None:  # noqa: ANN001
    with session_factory() as session:
        for i in range(3):
            audit.record_event(session=session, action=audit.CHAT_ANSWER, details={"i": i})
    tamper(db_path, "DELETE FROM audit_records WHERE id = 3")
    broken = teller(db_path.parent, "audit", "verify")
    assert broken.returncode == 2
    assert "newest records were deleted" in broken.stderr


def test_users_commands(tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = teller(
        data, "users", "add", "carol", "--admin", "--password-stdin", stdin="pw-carol-123\n"
    )
    assert added.returncode == 0, added.stderr
    assert "added admin carol" in added.stdout
    again = teller(data, "users", "add", "carol", "--password-stdin", stdin="another-pass-1\n")
    assert again.returncode == 2 and "taken" in again.stderr.splitlines()[-1]
    weak = teller(data, "users", "add", "dave", "--password-stdin", stdin="short\n")
    assert weak.returncode == 2 and "at least 8" in weak.stderr.splitlines()[-1]
    bad_name = teller(data, "users", "add", "a b", "--password-stdin", stdin="long-enough-1\n")
    assert bad_name.returncode == 2 and "User names" in bad_name.stderr
    missing = teller(data, "users", "disable", "nobody")
    assert missing.returncode == 2 and "no user named 'nobody'" in missing.stderr
    last_admin = teller(data, "users", "disable", "carol")
    assert last_admin.returncode == 2 and "last enabled administrator" in last_admin.stderr
    assert (
        teller(data, "users", "add", "erin", "--password-stdin", stdin="pw-erin-1234\n").returncode
        == 0
    )
    assert teller(data, "users", "disable", "erin").returncode == 0
    assert teller(data, "users", "enable", "erin").returncode == 0
    passwd = teller(data, "users", "passwd", "erin", "--password-stdin", stdin="pw-erin-5678\n")
    assert passwd.returncode == 0, passwd.stderr
    no_tty = teller(data, "users", "passwd", "erin")
    assert no_tty.returncode == 2 and "--password-stdin" in no_tty.stderr
    verify = teller(data, "audit", "verify")
    assert verify.returncode == 0 and "intact: 5 records" in verify.stdout


def test_anchor_catches_a_chain_rebuilt_from_the_edit_onwards(
    session_factory,  # noqa: ANN001
    db_path: Path,
) -> None:
    """Someone with write access rewrites record 2 and recomputes every later hash and the
    head: the chain is consistent again, but the head noted earlier no longer matches."""
    with session_factory() as session:
        for i in range(4):
            audit.record_event(session=session, action=audit.CHAT_PROMPT, details={"i": i})
    first = teller(db_path.parent, "audit", "verify")
    anchor = first.stdout.split()[-1]
    assert anchor.startswith("4:")

    with session_factory() as session:
        rows = list(session.scalars(select(AuditRecord).order_by(AuditRecord.id)))
        rows[1].details = '{"i":"rewritten"}'
        previous = rows[0].hash
        for row in rows[1:]:
            row.prev_hash = previous
            row.hash = previous = audit.compute_hash(row)
        session.get(AuditHead, audit.HEAD_ID).last_hash = previous
        session.commit()
    assert teller(db_path.parent, "audit", "verify").returncode == 0, "a full rewrite is consistent"
    caught = teller(db_path.parent, "audit", "verify", "--anchor", anchor)
    assert caught.returncode == 2
    assert "record 4 no longer has the anchored hash" in caught.stderr
    bad = teller(db_path.parent, "audit", "verify", "--anchor", "four")
    assert bad.returncode == 2 and "not an anchor: give ID:HASH" in bad.stderr


def test_a_faked_retention_cut_fails_with_and_without_an_anchor(
    session_factory,  # noqa: ANN001
    db_path: Path,
) -> None:
    """Delete the oldest records, point the head's base at the last one deleted (retention
    off): the chain used to verify with the same head, anchored or not."""
    with session_factory() as session:
        for i in range(6):
            audit.record_event(session=session, action=audit.CHAT_PROMPT, details={"i": i})
        hashes = {r.id: r.hash for r in session.scalars(select(AuditRecord))}
    anchor = teller(db_path.parent, "audit", "verify").stdout.split()[-1]
    tamper(db_path, "DELETE FROM audit_records WHERE id <= 3")
    tamper(db_path, "UPDATE audit_head SET base_id = 3, base_hash = ?", hashes[3])

    plain = teller(db_path.parent, "audit", "verify")
    assert plain.returncode == 2
    assert "records 1..3 are gone (the head says a retention cut), but no audit.purged" in (
        plain.stderr
    )
    for anchored in (anchor, f"2:{hashes[2]}"):
        caught = teller(db_path.parent, "audit", "verify", "--anchor", anchored)
        assert caught.returncode == 2 and "records 1..3 are gone" in caught.stderr
    os.environ["TELLER_AUDIT_RETENTION_DAYS"] = "30"
    try:
        with_retention = teller(db_path.parent, "audit", "verify", "--anchor", f"2:{hashes[2]}")
    finally:
        del os.environ["TELLER_AUDIT_RETENTION_DAYS"]
    assert with_retention.returncode == 2 and "no audit.purged record" in with_retention.stderr
