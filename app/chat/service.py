"""Chat rules: a message in → history → prompt → engine → a persisted answer.

The answer is generated while its SSE stream is read. Whatever ends the stream — the model
finishing, Stop, a client that disconnects, server shutdown, the owner's account being
disabled — the text so far is stored with a status that says which. Its audit trail has a row
when generation starts and one when it ends, so an answer cut by a crash still shows
(`app.answers.recovery` adds the missing end at the next start).

A conversation that uses knowledge bases answers each question from their passages
(`app.knowledge.grounding`): the passages given are in the answer's audit start row and, once
it is stored, in its lineage, from which the page shows numbered citations.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.orm import Session, sessionmaker

from app.adapters.errors import AdapterError
from app.adapters.service import AdapterService
from app.answers.input_limits import newest_turns
from app.answers.lifecycle import Answer, AnswerNotRecorded
from app.answers.streams import ActiveStreams
from app.audit import service as audit
from app.chat.history import title_from
from app.chat.knowledge import conversation_knowledge_bases
from app.chat.schemas import ChatInputError
from app.config import Settings
from app.contract import ChatMessage
from app.engine.types import (
    Engine,
    EngineError,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from app.groups import service as groups
from app.knowledge import service as knowledge
from app.knowledge.grounding import Grounding, KnowledgeUnavailable, ground
from app.knowledge.worker import KnowledgeRuntime
from app.store import crud, knowledge_crud
from app.store.models import Conversation, Message, MessageStatus, StopReason, User

CONVERSATION_RENAMED = "chat.conversation_renamed"

SEARCHING = "Searching the knowledge bases…"
WRITING = "Writing…"
COUNT_AFTER_S = 0.5
"""How long an answer waits before the page says how many are ahead (on an engine that
answers many at once, a request that is not really queued starts before then)."""
WAITING_REFRESH_S = 1.0


def waiting_text(ahead: int) -> str:
    """What the page says while the engine holds an answer back."""
    if ahead <= 0:
        return "Waiting for the model…"
    return f"Waiting for the model ({ahead} ahead of you)…"


@dataclass(frozen=True)
class StreamUpdate:
    """What the page is told while an answer is written.

    `state`: a line saying what is happening (searching, waiting, writing); `adapter`: the
    adapter version answering ("" for the base model), as soon as it is known; `token`: new
    text; `done`: the stored message.
    """

    kind: Literal["state", "adapter", "token", "done"]
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
    knowledge_base_ids: Sequence[int] = (),
) -> tuple[Conversation, Message, Message]:
    """Store the user's message and an empty pending answer (validated before anything is stored).

    Args:
        adapter, knowledge_base_ids: a new conversation's choices (checked by the caller).

    Raises:
        ChatInputError: the content is empty or too long.
    """
    text = clean_content(content, settings)
    if conversation is None:
        conversation = crud.create_conversation(
            session=session, user_id=user.id, title=title_from(text), adapter=adapter
        )
        if knowledge_base_ids:
            knowledge_crud.set_conversation_knowledge_bases(
                session=session,
                conversation_id=conversation.id,
                knowledge_base_ids=knowledge_base_ids,
            )
    question, answer = ask(session=session, user=user, conversation=conversation, text=text)
    return conversation, question, answer


def ask(
    *,
    session: Session,
    user: User,
    conversation: Conversation,
    text: str,
    audit_details: dict[str, object] | None = None,
) -> tuple[Message, Message]:
    """Store `text` (already checked) as the user's question with a pending answer after it,
    and audit the question as a prompt.

    Args:
        audit_details: more for the prompt's audit row (what an edited question replaced).
    """
    question = crud.add_message(
        session=session, conversation=conversation, role="user", content=text
    )
    answer = pending_answer(session=session, conversation=conversation)
    audit.record_event(
        session=session,
        action=audit.CHAT_PROMPT,
        actor_id=user.id,
        details={
            "conversation_id": conversation.id,
            "message_id": question.id,
            "text": text,
            **(audit_details or {}),
        },
    )
    return question, answer


def pending_answer(*, session: Session, conversation: Conversation) -> Message:
    """An empty answer waiting for the model (its stream writes it)."""
    return crud.add_message(
        session=session,
        conversation=conversation,
        role="assistant",
        content="",
        status=MessageStatus.PENDING,
    )


def checked_adapter_choice(
    adapters: AdapterService, value: str, *, session: Session, user: User
) -> str | None:
    """A picker value from the chat page as stored on a conversation (None: the default).

    Raises:
        ChatInputError: it names no installed adapter, or none the user's groups grant.
    """
    try:
        choice = adapters.check_choice(value)
        if choice:
            groups.permitted_choice(groups.access_for(session=session, user=user), choice, adapters)
        return choice
    except AdapterError as exc:
        raise ChatInputError(str(exc)) from None


def choose_adapter(*, session: Session, conversation: Conversation, choice: str | None) -> None:
    """Answers from now on use `choice`; earlier answers keep the adapter they recorded."""
    conversation.adapter = choice
    session.commit()


# ---- answers --------------------------------------------------------------------------------


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
    return pending_answer(session=session, conversation=conversation)


def sampling_for(
    settings: Settings, *, temperature: float | None = None, max_new_tokens: int | None = None
) -> SamplingParams:
    """The server's sampling with a conversation's own settings (None: the server's); never
    longer answers than the server allows."""
    limit = min(max_new_tokens or settings.max_new_tokens, settings.max_new_tokens)
    return SamplingParams(
        temperature=settings.default_temperature if temperature is None else temperature,
        top_p=settings.default_top_p,
        max_new_tokens=limit,
    )


def requests_ahead(engine: Engine) -> int:
    """Answers the engine is writing or holding that a request submitted now waits behind.

    Exact for an engine that writes one answer at a time; an engine that writes many at
    once starts a request before the page shows this count (`COUNT_AFTER_S`).
    """
    return max(engine.active_streams, engine.queue_depth)


async def _until_first_event(answer: Answer, ahead: int) -> AsyncIterator[StreamUpdate]:
    """Say how many answers are ahead while the engine holds this one back.

    The count only goes down: each refresh takes the smaller of the last count and the
    other answers the engine still streams (those behind this one would count too).

    Raises:
        EngineError: the engine failed before its first event.
    """
    first = asyncio.ensure_future(answer.first_event())
    try:
        timeout = COUNT_AFTER_S
        while True:
            done, _ = await asyncio.wait({first}, timeout=timeout)
            if done:
                break
            ahead = min(ahead, max(0, answer.ctx.engine.active_streams - 1))
            yield StreamUpdate("state", text=waiting_text(ahead))
            timeout = WAITING_REFRESH_S
    finally:
        if not first.done():
            first.cancel()
            with contextlib.suppress(BaseException):
                await first
    first.result()


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
    *, answer: Answer, message: Message, knowledge_runtime: KnowledgeRuntime | None = None
) -> AsyncGenerator[StreamUpdate, None]:
    """Generate a pending answer on a reserved `answer`, yielding tokens, then the stored message.

    A message that is not pending (already answered, or being answered elsewhere) yields its
    stored state at once, so reloading a page never starts a second generation. The answer is
    closed (slot, lease, audit row) before the stored message is yielded. When the
    conversation uses knowledge bases (and `knowledge_runtime` is given), the question is
    answered from their passages, and the passages given are stored as the answer's lineage.
    """
    ctx = answer.ctx
    message_id: int | None = None
    grounding: Grounding | None = None
    try:
        with ctx.session_factory() as session:
            message = session.merge(message)
            if not crud.claim_pending(session=session, message=message):
                yield StreamUpdate("done", message=message)
                return
            history = _history(session, message, ctx.settings)
            conversation = message.conversation
            choice = conversation.adapter
            sampling = sampling_for(
                ctx.settings,
                temperature=conversation.temperature,
                max_new_tokens=conversation.max_new_tokens,
            )
            owner = session.get(User, conversation.user_id)
            base_ids = (
                conversation_knowledge_bases(session=session, conversation=conversation, user=owner)
                if knowledge_runtime is not None and owner is not None
                else []
            )
            message.model = ctx.engine.info.model
            session.commit()
            message_id, conversation_id = message.id, message.conversation_id
        try:
            if base_ids and knowledge_runtime is not None:
                yield StreamUpdate("state", text=SEARCHING)
                grounding = await ground(
                    session_factory=ctx.session_factory,
                    knowledge=knowledge_runtime,
                    knowledge_base_ids=base_ids,
                    messages=history,
                    max_context_tokens=ctx.settings.max_context_tokens,
                    max_new_tokens=sampling.max_new_tokens,
                    count_tokens=ctx.engine.count_tokens,
                )
            ahead = requests_ahead(ctx.engine)
            await answer.start(
                GenerationRequest(
                    messages=list(grounding.messages) if grounding else history,
                    sampling=sampling,
                ),
                choice=choice,
                details={
                    "conversation_id": conversation_id,
                    "message_id": message_id,
                    "model": ctx.engine.info.model,
                    **(grounding.audit_details() if grounding else {}),
                },
                conversation_id=conversation_id,
                message_id=message_id,
                checkpoint=lambda text: _checkpoint(ctx.session_factory, message_id, text),
                log_prompt=history[-1].content if history else None,
                fixed_answer=grounding.fixed_answer if grounding else None,
            )
            version = answer.version
            tag = f"{version.name} v{version.version}" if version else ""
            yield StreamUpdate("adapter", text=tag)
            async for update in _until_first_event(answer, ahead):
                yield update
            writing = False
            async for event in answer.events():
                if isinstance(event, TokenEvent):
                    if not writing:
                        writing = True
                        yield StreamUpdate("state", text=WRITING)
                    yield StreamUpdate("token", text=event.text)
        except (EngineError, AdapterError, KnowledgeUnavailable, AnswerNotRecorded) as exc:
            answer.error = str(exc)
        except (asyncio.CancelledError, GeneratorExit):
            answer.stop(StopReason.DISCONNECT)  # the page went away (a Stop said so first)
            raise
    finally:
        # Runs on normal end, Stop, client disconnect (CancelledError/GeneratorExit) alike.
        if message_id is not None:
            answer.request.cancel.set()
            stored = _store_answer(ctx.session_factory, message_id, answer, grounding)
            message = stored or message
        await answer.close()
    yield StreamUpdate("done", message=message)


_STATUS = {
    "complete": MessageStatus.COMPLETE,
    "stopped": MessageStatus.STOPPED,
    "error": MessageStatus.ERROR,
}


def _store_answer(
    session_factory: sessionmaker[Session],
    message_id: int,
    answer: Answer,
    grounding: Grounding | None = None,
) -> Message | None:
    """The answer's text, status, tokens, adapter version and, for an answer given passages
    (even a stopped one), their lineage on its message."""
    finish = answer.finish
    with session_factory() as session:
        stored = session.get(Message, message_id)
        if stored is None:  # the conversation was deleted meanwhile
            return None
        version = answer.version
        crud.finish_message(
            session=session,
            message=stored,
            content=answer.text,
            status=_STATUS[answer.status],
            error=answer.error,
            stop_reason=answer.stop_reason,
            prompt_tokens=finish.prompt_tokens if finish else None,
            completion_tokens=finish.completion_tokens if finish else None,
            adapter=(version.name, version.version, version.sha256) if version else None,
        )
        if grounding is not None and grounding.passages and (answer.finish or answer.parts):
            knowledge.record_lineage(
                session=session, message_id=message_id, passages=grounding.passages
            )
        return stored


def _checkpoint(session_factory: sessionmaker[Session], message_id: int, content: str) -> None:
    """Store the text so far, so a crash loses at most a few seconds of it."""
    with session_factory() as session:
        crud.save_partial_answer(session=session, message_id=message_id, content=content)


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
