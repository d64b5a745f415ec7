"""Changing a conversation after the fact: edit a question and answer again from there, its
own sampling settings, and the audit row of an export."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.audit import service as audit
from app.chat.schemas import ChatInputError
from app.chat.service import ask, clean_content
from app.config import Settings
from app.store import crud
from app.store.models import Conversation, Message, MessageStatus, User

CONVERSATION_EXPORTED = "chat.conversation_exported"


def edit_and_resend(
    *,
    session: Session,
    user: User,
    conversation: Conversation,
    message_id: int,
    content: str,
    settings: Settings,
) -> tuple[Message, Message]:
    """Replace one of the user's questions, and every turn after it, with the edited question
    and a new pending answer (the conversation goes on from there, as ChatGPT's edit does).

    The replaced turns stay in the audit trail; the new question is audited as a prompt that
    names the one it replaces.

    Raises:
        ChatInputError: the new text is empty or too long, the message is not a question of
            this conversation, or an answer after it is still being written.
    """
    text = clean_content(content, settings)
    original = crud.get_message(session=session, conversation=conversation, message_id=message_id)
    if original is None or original.role != "user":
        raise ChatInputError("That is not one of your questions here: reload the page.")
    later = [m for m in conversation.messages if m.id > original.id]
    if any(m.status == MessageStatus.STREAMING for m in later):
        raise ChatInputError("An answer is still being written: stop it first, then edit.")
    removed = crud.delete_messages_from(
        session=session, conversation=conversation, message_id=original.id
    )
    return ask(
        session=session,
        user=user,
        conversation=conversation,
        text=text,
        audit_details={"replaces_message_id": original.id, "messages_removed": removed},
    )


def _number(value: str, what: str, low: float, high: float, example: str) -> float | None:
    text = value.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not low <= number <= high:
        raise ChatInputError(f"{what} is a number from {low:g} to {high:g}, for example {example}.")
    return number


def update_settings(
    *,
    session: Session,
    conversation: Conversation,
    settings: Settings,
    temperature: str,
    max_new_tokens: str,
) -> None:
    """Store a conversation's own temperature and answer length (empty: the server's).

    Raises:
        ChatInputError: a value is not a number or is outside the server's limits.
    """
    limit = settings.max_new_tokens
    chosen_temperature = _number(
        temperature, "Temperature", 0.0, 2.0, "0.2 for steady answers, 1 for varied ones"
    )
    length = _number(max_new_tokens, "Answer length", 1, limit, str(min(256, limit)))
    if length is not None and length != int(length):
        raise ChatInputError("Answer length is a whole number of tokens.")
    crud.set_conversation_settings(
        session=session,
        conversation=conversation,
        temperature=chosen_temperature,
        max_new_tokens=None if length is None else int(length),
    )


def record_export(*, session: Session, conversation: Conversation, fmt: str, actor_id: int) -> None:
    """Audit a download of a conversation (its text leaves the server)."""
    audit.record_event(
        session=session,
        action=CONVERSATION_EXPORTED,
        actor_id=actor_id,
        details={"conversation_id": conversation.id, "format": fmt},
    )
