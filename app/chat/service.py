"""Chat rules: a message in → history → prompt → engine → a persisted answer.

The answer is generated while its SSE stream is read. Whatever ends the stream — the model
finishing, Stop, a client that disconnects, server shutdown, the owner's account being
disabled — the text so far is stored with a status that says which. Its audit trail has a row
when generation starts and one when it ends, so an answer cut by a crash still shows
(`app.answers.recovery` adds the missing end at the next start).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.orm import Session, sessionmaker

from app.adapters.errors import AdapterError
from app.adapters.service import AdapterService, Lease
from app.answers.input_limits import newest_turns
from app.answers.owner import owner_disabled
from app.answers.recovery import CHAT_ANSWER_STARTED
from app.answers.streams import ActiveStreams, Running
from app.audit import service as audit
from app.chat.schemas import ChatInputError
from app.config import Settings
from app.contract import ChatMessage
from app.engine.types import (
    Engine,
    EngineBusy,
    EngineError,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from app.ops import metrics
from app.store import crud
from app.store.models import Conversation, Message, MessageStatus, User

TITLE_CHARS = 60
CHECKPOINT_SECONDS = 2.0
"""How often a streaming answer is written to the database, so a crash loses little (and the
owner's account is checked, so a disabled user's answer stops)."""

CONVERSATION_RENAMED = "chat.conversation_renamed"


@dataclass(frozen=True)
class StreamUpdate:
    kind: Literal["token", "done"]
    text: str = ""
    message: Message | None = None


def clean_content(content: str, settings: Settings) -> str:
    """The message text to store, or a ChatInputError saying what to fix."""
    text = content.replace("\r\n", "\n").strip()
    if not text:
        raise ChatInputError("The message is empty: type a question first.")
    if len(text) > settings.max_input_chars:
        raise ChatInputError(
            f"The message is {len(text):,} characters long; the limit is "
            f"{settings.max_input_chars:,}. Shorten it or split it into several messages."
        )
    return text


def start_turn(
    *,
    session: Session,
    user: User,
    conversation: Conversation | None,
    content: str,
    settings: Settings,
    adapter: str | None = None,
) -> tuple[Conversation, Message, Message]:
    """Store the user's message and an empty pending answer (validated before anything is stored).

    Raises:
        ChatInputError: the content is empty or too long.
    """
    text = clean_content(content, settings)
    if conversation is None:
        title = text.splitlines()[0][:TITLE_CHARS]
        conversation = crud.create_conversation(
            session=session, user_id=user.id, title=title, adapter=adapter
        )
    question = crud.add_message(
        session=session, conversation=conversation, role="user", content=text
    )
    answer = crud.add_message(
        session=session,
        conversation=conversation,
        role="assistant",
        content="",
        status=MessageStatus.PENDING,
    )
    audit.record_event(
        session=session,
        action=audit.CHAT_PROMPT,
        actor_id=user.id,
        details={"conversation_id": conversation.id, "message_id": question.id, "text": text},
    )
    return conversation, question, answer


def checked_adapter_choice(adapters: AdapterService, value: str) -> str | None:
    """A picker value from the chat page as stored on a conversation (None: the default).

    Raises:
        ChatInputError: it names no installed adapter.
    """
    try:
        return adapters.check_choice(value)
    except AdapterError as exc:
        raise ChatInputError(str(exc)) from None


def choose_adapter(*, session: Session, conversation: Conversation, choice: str | None) -> None:
    """Answers from now on use `choice`; earlier answers keep the adapter they recorded."""
    conversation.adapter = choice
    session.commit()


def regenerate(*, session: Session, conversation: Conversation) -> Message:
    """Replace the last answer with a new pending one.

    Raises:
        ChatInputError: there is no answer to regenerate, or one is still being written.
    """
    last = crud.last_message(session=session, conversation=conversation)
    if last is None or last.role != "assistant":
        raise ChatInputError("There is no answer to regenerate yet.")
    if last.status in (MessageStatus.PENDING, MessageStatus.STREAMING):
        raise ChatInputError("The answer is still being written; stop it first.")
    crud.delete_message(session=session, message=last)
    return crud.add_message(
        session=session,
        conversation=conversation,
        role="assistant",
        content="",
        status=MessageStatus.PENDING,
    )


def sampling_for(settings: Settings) -> SamplingParams:
    return SamplingParams(
        temperature=settings.default_temperature,
        top_p=settings.default_top_p,
        max_new_tokens=settings.max_new_tokens,
    )


def _history(session: Session, message: Message, settings: Settings) -> list[ChatMessage]:
    """The turns the engine is given: the newest within the input limits (each turn was
    within them when sent, but a long conversation is not), after the system prompt."""
    turns = newest_turns(
        [
            ChatMessage(m.role, m.content)
            for m in crud.history_before(session=session, message=message)
        ],
        settings,
    )
    return (
        [ChatMessage("system", settings.system_prompt), *turns] if settings.system_prompt else turns
    )


async def stream_answer(
    *,
    session_factory: sessionmaker[Session],
    engine: Engine,
    streams: ActiveStreams,
    settings: Settings,
    message: Message,
    adapters: AdapterService | None = None,
) -> AsyncIterator[StreamUpdate]:
    """Generate a pending answer, yielding tokens, then the stored message.

    A message that is not pending (already answered, or being answered elsewhere) yields its
    stored state at once, so reloading a page never starts a second generation.
    """
    with session_factory() as session:
        message = session.merge(message)
        if not crud.claim_pending(session=session, message=message):
            yield StreamUpdate("done", message=message)
            return
        history = _history(session, message, settings)
        choice = message.conversation.adapter
        owner_id = message.conversation.user_id
        message.model = engine.info.model
        session.commit()
        request = GenerationRequest(messages=history, sampling=sampling_for(settings))
        audit.record_event(
            session=session,
            action=CHAT_ANSWER_STARTED,
            actor_id=owner_id,
            details={
                "conversation_id": message.conversation_id,
                "message_id": message.id,
                "model": message.model,
                "adapter": choice,
                "sampling": dataclasses.asdict(request.sampling),
            },
        )
    running = streams.register(
        Running(owner_id, request.cancel, message.conversation_id, message.id)
    )
    started, first_token_at = time.monotonic(), None
    parts: list[str] = []
    status, error = MessageStatus.STOPPED, None
    prompt_tokens = completion_tokens = None
    last_checkpoint = time.monotonic()
    lease: Lease | None = None
    try:
        if adapters is not None:
            # Held until the answer ends: a newer version may load meanwhile, this one stays.
            lease = await adapters.acquire(choice)
            request.adapter = lease.engine_name
        async for event in engine.generate(request):
            if isinstance(event, TokenEvent):
                parts.append(event.text)
                first_token_at = first_token_at or time.monotonic()
                yield StreamUpdate("token", text=event.text)
                if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                    last_checkpoint = time.monotonic()
                    if not _checkpoint(session_factory, message.id, "".join(parts), owner_id):
                        request.cancel.set()  # stored as stopped, like Stop
            elif isinstance(event, FinishEvent):
                prompt_tokens, completion_tokens = event.prompt_tokens, event.completion_tokens
                if event.reason == "error":
                    status, error = MessageStatus.ERROR, event.error or "generation failed"
                elif event.reason != "cancelled":
                    status = MessageStatus.COMPLETE
    except EngineBusy as exc:
        status, error = MessageStatus.ERROR, str(exc)
    except (EngineError, AdapterError) as exc:
        status, error = MessageStatus.ERROR, str(exc)
    finally:
        # Runs on normal end, Stop, client disconnect (CancelledError/GeneratorExit) alike.
        request.cancel.set()
        streams.unregister(running)
        if lease is not None and adapters is not None:
            adapters.release(lease)
        with session_factory() as session:
            stored = session.get(Message, message.id)
            if stored is not None:
                if lease is not None and lease.version is not None:
                    stored.adapter_name = lease.version.name
                    stored.adapter_version = lease.version.version
                    stored.adapter_sha256 = lease.version.sha256
                crud.finish_message(
                    session=session,
                    message=stored,
                    content="".join(parts),
                    status=status,
                    error=error,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                )
                _audit_answer(session, stored, request, started, first_token_at)
                message = stored
        metrics.record_answer(
            surface="chat",
            status=getattr(status, "value", str(status)),
            completion_tokens=len(parts) if completion_tokens is None else completion_tokens,
            first_token_seconds=None if first_token_at is None else first_token_at - started,
            error=error,
            log_text=settings.log_prompts,
            prompt=history[-1].content if history else None,
            answer="".join(parts),
        )
    yield StreamUpdate("done", message=message)


def _audit_answer(
    session: Session,
    message: Message,
    request: GenerationRequest,
    started: float,
    first_token_at: float | None,
) -> None:
    """One audit row per answer: who, where, which model and adapter, how, how long."""
    audit.record_event(
        session=session,
        action=audit.CHAT_ANSWER,
        actor_id=message.conversation.user_id,
        details={
            "conversation_id": message.conversation_id,
            "message_id": message.id,
            "model": message.model,
            "adapter_name": message.adapter_name,
            "adapter_version": message.adapter_version,
            "adapter_sha256": message.adapter_sha256,
            "sampling": dataclasses.asdict(request.sampling),
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
            "first_token_ms": (
                None if first_token_at is None else round((first_token_at - started) * 1000)
            ),
            "total_ms": round((time.monotonic() - started) * 1000),
            "status": message.status,
            "error": message.error,
            "text": message.content,
        },
    )


def _checkpoint(
    session_factory: sessionmaker[Session], message_id: int, content: str, owner_id: int
) -> bool:
    """Store the text so far; False when the owner's account was disabled meanwhile (maybe by
    `teller users disable` in another process), so the answer must stop."""
    with session_factory() as session:
        stored = session.get(Message, message_id)
        if stored is not None:
            stored.content = content
            session.commit()
        return not owner_disabled(session=session, user_id=owner_id)


def rename_conversation(
    *, session: Session, conversation: Conversation, title: str, actor_id: int
) -> None:
    """Give a conversation a new title (audited: titles often say whom it is about).

    Raises:
        ChatInputError: the title is empty once spaces are folded.
    """
    cleaned = " ".join(title.split())[:200]
    if not cleaned:
        raise ChatInputError("The title is empty: type a name.")
    old = conversation.title
    crud.rename_conversation(session=session, conversation=conversation, title=cleaned)
    audit.record_event(
        session=session,
        action=CONVERSATION_RENAMED,
        actor_id=actor_id,
        details={"conversation_id": conversation.id, "old_title": old, "title": cleaned},
    )


def delete_conversation(
    *, session: Session, conversation: Conversation, streams: ActiveStreams, actor_id: int
) -> None:
    """Delete a conversation and its messages, stopping an answer still being written there.

    The audit row keeps what was deleted by whom (prompts and answers stay in their own rows).
    """
    streams.stop_conversation(conversation.id)
    conversation_id, title = conversation.id, conversation.title
    removed = crud.delete_conversation(session=session, conversation=conversation)
    audit.record_event(
        session=session,
        action=audit.CONVERSATION_DELETED,
        actor_id=actor_id,
        details={"conversation_id": conversation_id, "title": title, "messages": removed},
    )


async def wait_for_streams(streams: ActiveStreams, timeout: float) -> None:
    """At shutdown: stop every running answer and give them time to store their text."""
    streams.stop_all()
    deadline = time.monotonic() + timeout
    while len(streams) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
