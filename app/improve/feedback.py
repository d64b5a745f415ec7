"""Thumbs up / down on an answer, with an optional comment and corrected answer.

One row per (answer, person): rating again changes the row. Only the person whose
conversation holds the answer rates it; every change is audited.
"""

from __future__ import annotations

import json

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.answers.kinds import API_CALL
from app.audit.service import record_event
from app.store.improve_models import Feedback
from app.store.models import AuditRecord, Conversation, Message, User, utcnow

MAX_TEXT = 20_000


class FeedbackError(ValueError):
    """The feedback cannot be stored; the message says what to fix. `status` is the HTTP code."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def rateable_answer(*, session: Session, user: User, message_id: int) -> Message:
    """The answer `user` may rate: an assistant message in one of their conversations.

    Raises:
        FeedbackError: no such answer for this person (404), or not an answer (400).
    """
    message = session.get(Message, message_id)
    if message is None:
        raise FeedbackError("No such answer.", 404)
    conversation = session.get(Conversation, message.conversation_id)
    if conversation is None or conversation.user_id != user.id:
        raise FeedbackError("No such answer.", 404)
    if message.role != "assistant":
        raise FeedbackError("Only answers can be rated.")
    return message


def feedback_for(*, session: Session, user_id: int, message_ids: list[int]) -> dict[int, Feedback]:
    if not message_ids:
        return {}
    rows = session.scalars(
        select(Feedback).where(Feedback.user_id == user_id, Feedback.message_id.in_(message_ids))
    )
    return {row.message_id: row for row in rows}


def set_feedback(
    *,
    session: Session,
    user: User,
    message_id: int,
    rating: str,
    comment: str = "",
    correction: str = "",
    via: str = "web",
) -> Feedback:
    """Store (or change) `user`'s feedback on an answer and audit it.

    Raises:
        FeedbackError: unknown answer, a rating other than up/down, or text over the limit.
    """
    value = {"up": 1, "down": -1, "1": 1, "-1": -1}.get(rating.strip().lower())
    if value is None:
        raise FeedbackError("Rating must be 'up' or 'down'.")
    comment, correction = comment.strip(), correction.strip()
    if len(comment) > MAX_TEXT or len(correction) > MAX_TEXT:
        raise FeedbackError(f"Comment and correction must each be under {MAX_TEXT} characters.")
    message = rateable_answer(session=session, user=user, message_id=message_id)
    if correction == message.content.strip():
        correction = ""  # the editor comes prefilled with the answer: unchanged is no correction
    row = feedback_for(session=session, user_id=user.id, message_ids=[message_id]).get(message_id)
    changed = row is not None
    if row is None:
        row = Feedback(message_id=message_id, user_id=user.id)
        session.add(row)
    row.rating, row.comment, row.correction = value, comment, correction
    row.adapter_name, row.adapter_version = message.adapter_name, message.adapter_version
    row.updated_at = utcnow()
    session.flush()
    record_event(
        session=session,
        action="feedback.change" if changed else "feedback.add",
        actor_id=user.id,
        details={
            "feedback_id": row.id,
            "message_id": message_id,
            "conversation_id": message.conversation_id,
            "rating": value,
            "has_comment": bool(comment),
            "has_correction": bool(correction),
            "adapter_name": message.adapter_name,
            "adapter_version": message.adapter_version,
            "via": via,
        },
    )
    return row


def context_of(*, session: Session, message: Message, turns: int = 3) -> tuple[str, str]:
    """(instruction, input) for a training record: the question the answer replied to, and
    up to `turns` earlier exchanges as context."""
    earlier = list(
        session.scalars(
            select(Message)
            .where(Message.conversation_id == message.conversation_id, Message.id < message.id)
            .order_by(Message.id.desc())
            .limit(turns * 2 + 1)
        )
    )[::-1]
    question = ""
    if earlier and earlier[-1].role == "user":
        question = earlier.pop().content
    lines = [f"{'User' if m.role == 'user' else 'Assistant'}: {m.content}" for m in earlier]
    return question, "\n".join(lines)


def api_call_answer(*, session: Session, user: User, call_id: str) -> Message:
    """The stored answer of a finished `/v1` call of `user`, kept on first use.

    A `/v1` answer is not stored as a message while it runs; its end audit row holds the
    prompt, the text and the adapter version. The first feedback on it stores that call as a
    conversation whose id is the call id (both are 32 hex digits), so datasets and lineage
    read it as they read a chat answer, and a second feedback finds the same answer.

    Raises:
        FeedbackError: a malformed call id (400), or no finished call of this person (404).
    """
    call_id = call_id.strip().lower()
    if len(call_id) != 32 or any(c not in "0123456789abcdef" for c in call_id):
        raise FeedbackError("call_id must be the 32 hex digits of an x-teller-call-id header.")
    stored = session.get(Conversation, call_id)
    if stored is not None:
        if stored.user_id != user.id:
            raise FeedbackError(f"No finished call {call_id} of yours.", 404)
        return rateable_answer(session=session, user=user, message_id=stored.messages[-1].id)
    rows = session.scalars(
        select(AuditRecord).where(
            AuditRecord.action == API_CALL,
            AuditRecord.actor_id == user.id,
            AuditRecord.details.contains(call_id),
        )
    )
    details = next(
        (d for d in (json.loads(row.details) for row in rows) if d.get("call_id") == call_id),
        None,
    )
    if details is None:
        raise FeedbackError(
            f"No finished call {call_id} of yours (rate an answer after it has ended).", 404
        )
    prompt = details.get("prompt")
    turns = (
        [(m.get("role", "user"), str(m.get("content") or "")) for m in prompt]
        if isinstance(prompt, list)
        else [("user", str(prompt or ""))]
    )
    question = next((text for role, text in reversed(turns) if role == "user"), "")
    conversation = Conversation(
        id=call_id, user_id=user.id, title=f"API: {question[:60] or call_id}"
    )
    session.add(conversation)
    session.flush()
    for role, text in turns:
        if role in ("user", "assistant"):
            session.add(Message(conversation_id=call_id, role=role, content=text))
    answer = Message(
        conversation_id=call_id,
        role="assistant",
        content=str(details.get("text") or ""),
        model=details.get("served_model"),
        adapter_name=details.get("adapter_name"),
        adapter_version=details.get("adapter_version"),
        adapter_sha256=details.get("adapter_sha256"),
    )
    session.add(answer)
    session.flush()
    return answer
