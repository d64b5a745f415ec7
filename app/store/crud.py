"""Data access as keyword-only functions; every conversation query is scoped to its owner."""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.store.models import Conversation, Message, MessageStatus, utcnow


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
    return result.rowcount


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
    return result.rowcount == 1


def finish_message(
    *,
    session: Session,
    message: Message,
    content: str,
    status: str,
    error: str | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    adapter: tuple[str, int, str] | None = None,
) -> None:
    """Store an answer's end; `adapter` is the (name, version, sha256) that answered."""
    message.content = content
    message.status = status
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
        .values(status=MessageStatus.STOPPED, finished_at=utcnow())
    )
    session.commit()
    return result.rowcount


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
