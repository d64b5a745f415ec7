"""The audit head exported outside the database, and verification against it: what catches a
tail cut with the head moved back, which the chain alone cannot show."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from app.audit import service as audit
from app.audit.head_log import export_head, head_export_loop, read_anchors
from app.audit.verify import AnchorError, verify_chain
from app.store.models import AuditHead, AuditRecord
from tests.support.cli import teller
from tests.support.web import signed_in_client


def head_of(db: Path) -> str:
    with sqlite3.connect(db) as connection:
        last_id, last_hash = connection.execute(
            "SELECT last_id, last_hash FROM audit_head"
        ).fetchone()
    return f"{last_id}:{last_hash}"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def fill(session_factory, count: int) -> None:  # noqa: ANN001
    with session_factory() as session:
        for i in range(count):
            audit.record_event(session=session, action=audit.CHAT_ANSWER, details={"i": i})


@pytest.fixture
def teller_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """TELLER_AUDIT_HEAD_LOG for the `teller` commands a test runs; the path it names."""
    path = tmp_path / "audit-head.log"
    monkeypatch.setenv("TELLER_AUDIT_HEAD_LOG", str(path))
    return path


def test_the_server_exports_the_head_at_start_and_at_shutdown(
    scripted_server,  # noqa: ANN001
    teller_env: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="app.audit.head_log")
    with scripted_server(audit_head_log=str(teller_env)) as server:
        db = Path(server.app.state.settings.data_dir) / "teller.db"
        deadline = time.monotonic() + 10
        while not lines(teller_env) and time.monotonic() < deadline:
            time.sleep(0.05)
        [at_start] = lines(teller_env)
        signed_in_client(server, "alice", "alice-password-1")  # a sign-in is audited
    at_start_time, at_start_head = at_start.split(" ")
    assert at_start_time.endswith("Z")
    assert lines(teller_env)[-1].endswith(f" {head_of(db)}"), "the head after the sign-in"
    assert head_of(db) != at_start_head
    logged = [r.getMessage() for r in caplog.records if r.name == "app.audit.head_log"]
    assert logged[0] == f"audit head {at_start_head}"
    assert logged[-1] == f"audit head {head_of(db)}"

    verified = teller(db.parent, "audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert f"{len(lines(teller_env))} anchors matched" in verified.stdout


def test_the_head_is_exported_every_period(
    session_factory,  # noqa: ANN001
    make_settings,  # noqa: ANN001
    db_path: Path,
    tmp_path: Path,
) -> None:
    settings = make_settings(data_dir=db_path.parent, audit_head_log=str(tmp_path / "heads"))

    async def run_for_a_while() -> None:
        loop = asyncio.create_task(head_export_loop(settings, session_factory, every=0.01))
        while len(lines(tmp_path / "heads")) < 3:
            await asyncio.sleep(0.01)
        loop.cancel()

    asyncio.run(asyncio.wait_for(run_for_a_while(), timeout=30))
    assert len(lines(tmp_path / "heads")) >= 3


def test_a_cut_tail_with_the_head_moved_back_is_caught_by_the_head_log(
    session_factory,  # noqa: ANN001
    make_settings,  # noqa: ANN001
    db_path: Path,
    teller_env: Path,
    tmp_path: Path,
) -> None:
    """The known limit of hash chains: delete the newest records and set the head to the last
    one kept, and the chain is consistent again. An exported head newer than that shows it."""
    settings = make_settings(data_dir=db_path.parent, audit_head_log=str(teller_env))
    fill(session_factory, 5)
    export_head(settings=settings, session_factory=session_factory)
    fill(session_factory, 3)
    export_head(settings=settings, session_factory=session_factory)
    shipped = tmp_path / "shipped-copy.log"
    shutil.copy(teller_env, shipped)

    with session_factory() as session:
        kept = session.scalar(select(AuditRecord).where(AuditRecord.id == 5))
        session.query(AuditRecord).filter(AuditRecord.id > 5).delete()
        head = session.get(AuditHead, audit.HEAD_ID)
        head.last_id, head.last_hash = kept.id, kept.hash
        session.commit()
        assert verify_chain(session=session, retention_days=0).ok, "invisible without anchors"

    caught = teller(db_path.parent, "audit", "verify")
    assert caught.returncode == 2
    assert "anchored record 8 is past the head at record 5" in caught.stderr

    teller_env.unlink()  # deleting the local head log does not hide it either
    missing = teller(db_path.parent, "audit", "verify")
    assert missing.returncode == 2 and "TELLER_AUDIT_HEAD_LOG is" in missing.stderr
    assert "does not exist" in missing.stderr
    teller_env.write_text(shipped.read_text().splitlines()[0] + "\n")
    from_copy = teller(db_path.parent, "audit", "verify", "--anchor-file", str(shipped))
    assert from_copy.returncode == 2 and "past the head" in from_copy.stderr


def test_anchor_files_take_head_log_lines_notes_and_json_log_lines(tmp_path: Path) -> None:
    digest = "ab" * 32
    log_line = {"ts": "2030-01-02T03:04:05.678Z", "message": f"audit head 7:{digest}"}
    other = {"ts": "2030-01-02T03:04:06.000Z", "message": "GET / 200"}
    path = tmp_path / "anchors"
    path.write_text(
        f"# noted by hand\n2030-01-01T00:00:00.000001Z 3:{digest}\n\n5:{digest.upper()}\n"
        f"{json.dumps(log_line)}\n{json.dumps(other)}\n"
    )
    anchors = read_anchors(path)
    assert [(a.id, a.hash) for a in anchors] == [(3, digest), (5, digest), (7, digest)]
    assert anchors[0].at.isoformat() == "2030-01-01T00:00:00.000001"
    assert anchors[1].at is None
    assert anchors[2].at.isoformat() == "2030-01-02T03:04:05.678000"

    path.write_text(f"3:{digest}\nyesterday 4:{digest}\n")
    with pytest.raises(AnchorError, match="line 2 of .* is not 'TIME ID:HASH'"):
        read_anchors(path)
    path.write_text("# nothing yet\n")
    with pytest.raises(AnchorError, match="holds no anchors"):
        read_anchors(path)
