"""Data access as keyword-only functions; every conversation query is scoped to its owner."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.store.db import rows_affected
from app.store.models import Conversation, Message, MessageStatus, StopReason, utcnow


def list_conversations(*, session: Session, user_id: int, limit: int = 200) -> list[Conversation]:
    query = (
        select(Conversation)
        .where(Conversation.user_id == user_id)
        .order_by(Conversation.updated_at.desc())
        .limit(limit)
    )
    return list(session.scalars(query))


def get_conversation(
    *, session: Session, user_id: int, conversation_id: str
) -> Conversation | None:
    """The conversation if it exists *and* belongs to `user_id`; None otherwise."""
    return session.scalar(
        select(Conversation).where(
            Conversation.id == conversation_id, Conversation.user_id == user_id
        )
    )


def create_conversation(
    *, session: Session, user_id: int, title: str = "New chat", adapter: str | None = None
) -> Conversation:
    conversation = Conversation(user_id=user_id, title=title, adapter=adapter)
    session.add(conversation)
    session.commit()
    return conversation


def rename_conversation(*, session: Session, conversation: Conversation, title: str) -> None:
    conversation.title = title
    session.commit()


def delete_conversation(*, session: Session, conversation: Conversation) -> int:
    """Delete a conversation and its messages; how many messages went with it."""
    result = session.execute(delete(Message).where(Message.conversation_id == conversation.id))
    session.delete(conversation)
    session.commit()
    return rows_affected(result)


def add_message(
    *,
    session: Session,
    conversation: Conversation,
    role: str,
    content: str,
    status: str = MessageStatus.COMPLETE,
) -> Message:
    message = Message(conversation_id=conversation.id, role=role, content=content, status=status)
    session.add(message)
    conversation.updated_at = utcnow()
    session.commit()
    return message


def get_message(*, session: Session, conversation: Conversation, message_id: int) -> Message | None:
    return session.scalar(
        select(Message).where(Message.id == message_id, Message.conversation_id == conversation.id)
    )


def history_before(*, session: Session, message: Message) -> list[Message]:
    """The finished turns that precede `message` in its conversation."""
    query = (
        select(Message)
        .where(Message.conversation_id == message.conversation_id, Message.id < message.id)
        .order_by(Message.id)
    )
    return [m for m in session.scalars(query) if m.role == "user" or m.content]


def claim_pending(*, session: Session, message: Message) -> bool:
    """Atomically move a message from pending to streaming, so only one stream generates it."""
    result = session.execute(
        update(Message)
        .where(Message.id == message.id, Message.status == MessageStatus.PENDING)
        .values(status=MessageStatus.STREAMING)
    )
    session.commit()
    session.refresh(message)
    return rows_affected(result) == 1


def finish_message(
    *,
    session: Session,
    message: Message,
    content: str,
    status: str,
    error: str | None = None,
    stop_reason: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    adapter: tuple[str, int, str] | None = None,
) -> None:
    """Store an answer's end; `adapter` is the (name, version, sha256) that answered."""
    message.content = content
    message.status = status
    message.stop_reason = stop_reason
    message.error = error
    message.prompt_tokens = prompt_tokens
    message.completion_tokens = completion_tokens
    if adapter is not None:
        message.adapter_name, message.adapter_version, message.adapter_sha256 = adapter
    message.finished_at = utcnow()
    session.commit()


def save_partial_answer(*, session: Session, message_id: int, content: str) -> None:
    """The text of an answer still being written (a crash then loses only what came after)."""
    session.execute(update(Message).where(Message.id == message_id).values(content=content))
    session.commit()


def mark_interrupted(*, session: Session) -> int:
    """At start, answers left streaming by a crash or restart become `stopped`."""
    result = session.execute(
        update(Message)
        .where(Message.status.in_([MessageStatus.STREAMING]))
        .values(status=MessageStatus.STOPPED, stop_reason=StopReason.RESTART, finished_at=utcnow())
    )
    session.commit()
    return rows_affected(result)


def last_message(*, session: Session, conversation: Conversation) -> Message | None:
    return session.scalar(
        select(Message)
        .where(Message.conversation_id == conversation.id)
        .order_by(Message.id.desc())
        .limit(1)
    )


def delete_message(*, session: Session, message: Message) -> None:
    session.delete(message)
    session.commit()


def delete_messages_from(*, session: Session, conversation: Conversation, message_id: int) -> int:
    """Delete `message_id` and every later message of the conversation; how many went."""
    result = session.execute(
        delete(Message).where(Message.conversation_id == conversation.id, Message.id >= message_id)
    )
    conversation.updated_at = utcnow()
    session.commit()
    session.expire(conversation, ["messages"])
    return rows_affected(result)


def set_conversation_settings(
    *,
    session: Session,
    conversation: Conversation,
    temperature: float | None,
    max_new_tokens: int | None,
) -> None:
    """A conversation's own sampling settings (None: the server's default)."""
    conversation.temperature = temperature
    conversation.max_new_tokens = max_new_tokens
    session.commit()


@dataclass(frozen=True)
class SearchHit:
    """A conversation that matches a search, with the first message that does (if any)."""

    conversation_id: str
    title: str
    updated_at: datetime
    snippet_source: str | None
    """The matching message's text (None: only the title matched)."""


def _like(text: str) -> str:
    """`text` as a LIKE pattern matching it anywhere, its wildcards taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_conversations(
    *, session: Session, user_id: int, text: str, limit: int = 30, scan: int = 2000
) -> list[SearchHit]:
    """The user's conversations whose title or messages contain `text` (any case), newest first.

    Bounded: only the owner's messages are read (their conversations' index, never another
    user's rows), at most `scan` matches are kept (the newest), and at most `limit`
    conversations come back.
    """
    pattern = _like(text)
    titles = session.execute(
        select(Conversation.id, Conversation.title, Conversation.updated_at)
        .where(
            Conversation.user_id == user_id,
            Conversation.title.ilike(pattern, escape="\\"),
        )
        .order_by(Conversation.updated_at.desc())
        .limit(limit)
    ).all()
    owned = select(Conversation.id).where(Conversation.user_id == user_id)
    messages = session.execute(
        select(Message.conversation_id, Message.content, Message.id)
        .where(
            Message.conversation_id.in_(owned),  # the owner's messages, through their index
            Message.content.ilike(pattern, escape="\\"),
        )
        .order_by(Message.id.desc())
        .limit(scan)
    ).all()
    first_match: dict[str, str] = {}
    for conversation_id, content, _ in messages:
        first_match.setdefault(conversation_id, content)
    hits = {
        row.id: SearchHit(row.id, row.title, row.updated_at, first_match.get(row.id))
        for row in titles
    }
    missing = [cid for cid in first_match if cid not in hits]
    if missing:
        rows = session.execute(
            select(Conversation.id, Conversation.title, Conversation.updated_at).where(
                Conversation.id.in_(missing[: limit * 2]), Conversation.user_id == user_id
            )
        ).all()
        for row in rows:
            hits[row.id] = SearchHit(row.id, row.title, row.updated_at, first_match[row.id])
    ordered = sorted(hits.values(), key=lambda hit: hit.updated_at, reverse=True)
    return ordered[:limit]
