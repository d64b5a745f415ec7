"""The chat's store helpers on SQLite and PostgreSQL alike (migration 0007 applied to both):
search across one user's conversations, edit-and-resend's cut, a conversation's settings,
and the stop reason an answer keeps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.store import crud
from app.store.db import make_engine, make_session_factory, migrate
from app.store.models import Message, MessageStatus, StopReason, User
from tests.knowledge.postgres import postgres_cluster

Factory = sessionmaker[Session]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'teller.db'}")
    else:
        engine = make_engine(request.getfixturevalue("postgres_url"))
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    migrate(engine)
    yield make_session_factory(engine)
    engine.dispose()


def chat(session: Session, user: User, title: str, *texts: str) -> str:
    conversation = crud.create_conversation(session=session, user_id=user.id, title=title)
    for number, content in enumerate(texts):
        role = "user" if number % 2 == 0 else "assistant"
        crud.add_message(session=session, conversation=conversation, role=role, content=content)
    return conversation.id


def test_search_edit_settings_and_stop_reasons(factory: Factory) -> None:
    with factory() as session:
        ann, bob = User(username="ann"), User(username="bob")
        session.add_all([ann, bob])
        session.commit()
        leverage = chat(session, ann, "Leverage", "Net debt / EBITDA?", "It is 2.5x.")
        growth = chat(session, ann, "Growth 100%", "Is growth_rate 12%?", "Yes.")
        chat(session, bob, "Bob's EBITDA", "EBITDA of Bob Corp?")

        def found(words: str) -> list[tuple[str, str | None]]:
            hits = crud.search_conversations(session=session, user_id=ann.id, text=words)
            return [(hit.conversation_id, hit.snippet_source) for hit in hits]

        assert found("ebitda") == [(leverage, "Net debt / EBITDA?")]  # any case, ann's only
        assert found("leverage") == [(leverage, None)]  # the title alone
        assert found("100%") == [(growth, None)]
        assert found("h_r") == [(growth, "Is growth_rate 12%?")]
        assert found("_%") == []  # wildcards are plain characters
        assert found("2%") == [(growth, "Is growth_rate 12%?")]

        conversation = crud.get_conversation(
            session=session, user_id=ann.id, conversation_id=growth
        )
        first_answer = conversation.messages[1]
        assert (
            crud.delete_messages_from(
                session=session, conversation=conversation, message_id=first_answer.id
            )
            == 1
        )
        assert [m.content for m in conversation.messages] == ["Is growth_rate 12%?"]

        crud.set_conversation_settings(
            session=session, conversation=conversation, temperature=0.2, max_new_tokens=16
        )
        session.expire_all()
        again = crud.get_conversation(session=session, user_id=ann.id, conversation_id=growth)
        assert (again.temperature, again.max_new_tokens) == (0.2, 16)

        stopped = crud.add_message(
            session=session, conversation=again, role="assistant", content="", status="streaming"
        )
        crud.finish_message(
            session=session,
            message=stopped,
            content="Part",
            status=MessageStatus.STOPPED,
            stop_reason=StopReason.USER,
        )
        cut = crud.add_message(
            session=session, conversation=again, role="assistant", content="", status="streaming"
        )
        assert crud.mark_interrupted(session=session) == 1
        session.expire_all()
        assert session.get(Message, stopped.id).stop_reason == "user"
        assert (session.get(Message, cut.id).status, session.get(Message, cut.id).stop_reason) == (
            "stopped",
            "restart",
        )
