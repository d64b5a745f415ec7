"""Start-up recovery against a real SQLite file: every answer that started and never ended
gets an `*.interrupted` row, once, and chat answers left streaming are stored as stopped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.answers import kinds, recovery
from app.audit import service as audit
from app.store import crud
from app.store.db import make_engine, make_session_factory, migrate
from app.store.models import AuditRecord, Message, MessageStatus, User


@pytest.fixture
def session_factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'teller.db'}")
    migrate(engine)
    yield make_session_factory(engine)
    engine.dispose()


def rows(session: Session, action: str) -> list[dict]:
    query = select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.id)
    return [{**json.loads(r.details), "actor": r.actor_name} for r in session.scalars(query)]


def test_unfinished_answers_are_audited_once(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as session:
        user = User(username="alice")
        session.add(user)
        session.commit()
        conversation = crud.create_conversation(session=session, user_id=user.id)
        cut = crud.add_message(
            session=session,
            conversation=conversation,
            role="assistant",
            content="Half an ans",  # its last checkpoint
            status=MessageStatus.STREAMING,
        )

        def event(action: str, **details: object) -> None:
            audit.record_event(session=session, action=action, actor_id=user.id, details=details)

        ids = {"conversation_id": conversation.id}
        event(kinds.CHAT_ANSWER_STARTED, message_id=cut.id, **ids)
        event(kinds.CHAT_ANSWER_STARTED, message_id=cut.id + 100, **ids)
        event(audit.CHAT_ANSWER, message_id=cut.id + 100, **ids)  # finished
        event(kinds.API_CALL_STARTED, call_id="killed", endpoint="completions", ip="10.0.0.7")
        event(kinds.API_CALL_STARTED, call_id="done", endpoint="completions")
        event(audit.API_CALL, call_id="done", endpoint="completions")
        # An end written before its start (a call refused while its first row was on the way).
        event(audit.API_CALL, call_id="raced", endpoint="completions")
        event(kinds.API_CALL_STARTED, call_id="raced", endpoint="completions")

        found = recovery.recover_interrupted(session=session)

        assert (found.interrupted, found.marked_stopped) == (2, 1)
        [chat] = rows(session, kinds.CHAT_ANSWER_INTERRUPTED)
        assert chat["message_id"] == cut.id and chat["text"] == "Half an ans"
        assert chat["actor"] == "alice" and chat["status"] == "interrupted"
        [call] = rows(session, kinds.API_CALL_INTERRUPTED)
        assert (call["call_id"], call["ip"], call["actor"]) == ("killed", "10.0.0.7", "alice")
        assert "started_record" in call
        assert session.get(Message, cut.id).status == MessageStatus.STOPPED

        # The next start looks only past its own `server.started`: nothing is audited twice.
        again = recovery.recover_interrupted(session=session)
        assert again.interrupted == 0
        assert len(rows(session, kinds.CHAT_ANSWER_INTERRUPTED)) == 1
        assert len(rows(session, kinds.API_CALL_INTERRUPTED)) == 1
        assert [r["interrupted"] for r in rows(session, recovery.SERVER_STARTED)] == [2, 0]
