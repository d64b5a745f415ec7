"""The answer stream: one SSE response per answer, from the engine's tokens to the final
message HTML."""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, Request, status
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from app.answers.kinds import CHAT
from app.answers.lifecycle import Answer
from app.chat import knowledge, service
from app.chat.web import ConversationDep
from app.deps import AnswersDep, KnowledgeDep, SessionDep
from app.ops.requests import client_ip
from app.store import crud
from app.store.models import Conversation, Message
from app.web.calculations import answer_html, token_html
from app.web.templating import render_fragment, templates

router = APIRouter()
HTML_EVERY_S = 0.15
"""While an answer streams, its text is rendered as Markdown at most this often (each render
covers the whole text so far; the final render comes with `done`)."""


@router.get("/c/{conversation_id}/messages/{message_id}/stream")
async def stream_message(
    request: Request,
    conversation: ConversationDep,
    session: SessionDep,
    answers: AnswersDep,
    knowledge_runtime: KnowledgeDep,
    message_id: int,
) -> EventSourceResponse:
    """SSE for one answer. `state` (escaped): what is happening (waiting for the model, N
    ahead; writing); `adapter`: the adapter tag, once known; `html`: the answer so far as
    sanitised Markdown (at most every `HTML_EVERY_S`); `token`: the new text, escaped (for
    clients that build the text themselves); `error`; `done`: the final message HTML.

    Raises:
        LimitExceeded: every one of the user's generation slots is busy (429).
    """
    message = await asyncio.to_thread(_stored_answer, session, conversation, message_id)
    if message is None or message.role != "assistant":
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such answer in this conversation.")
    answer = await Answer.reserve_off_loop(  # its quota reads never hold up the event loop
        answers,
        CHAT,
        user_id=conversation.user_id,
        where={"endpoint": request.url.path, "ip": client_ip(request)},
    )

    async def events() -> AsyncIterator[ServerSentEvent]:
        updates = service.stream_answer(
            answer=answer, message=message, knowledge_runtime=knowledge_runtime
        )
        text, rendered_at = "", 0.0
        async with contextlib.aclosing(updates):
            async for update in updates:
                if update.kind == "token":
                    yield ServerSentEvent(token_html(templates, update.text), event="token")
                    text += update.text
                    if time.monotonic() - rendered_at >= HTML_EVERY_S:
                        page = await asyncio.to_thread(answer_html, templates, text)
                        rendered_at = time.monotonic()
                        yield ServerSentEvent(page, event="html")
                elif update.kind == "state":
                    yield ServerSentEvent(html.escape(update.text), event="state")
                elif update.kind == "adapter":
                    tag = f"· {update.text}" if update.text else ""
                    yield ServerSentEvent(html.escape(tag), event="adapter")
                else:
                    if update.message is not None and update.message.status == "error":
                        # Tell a failure (e.g. out of GPU memory) from an answer that ended.
                        error = html.escape(update.message.error or "")
                        yield ServerSentEvent(error, event="error")
                    final = await asyncio.to_thread(
                        _message_html, request, conversation, update.message
                    )
                    yield ServerSentEvent(final, event="done")

    # The answer closes itself before "done"; this closes it if the stream never started (an
    # async task: a sync one took a thread-pool hop per answer only to find it closed).
    return EventSourceResponse(
        events(), ping=15, send_timeout=30, background=BackgroundTask(answer.close)
    )


def _stored_answer(session: Session, conversation: Conversation, message_id: int) -> Message | None:
    """The answer's message row (a database read: run it on a worker thread); the request's
    session is closed after, since the stream may outlive it by minutes."""
    try:
        return crud.get_message(session=session, conversation=conversation, message_id=message_id)
    finally:
        session.close()


def _message_html(request: Request, conversation: Conversation, message: Message | None) -> str:
    """The stored answer as the page shows it, citations included (reads the database: run
    it on a worker thread)."""
    citations = {}
    if message is not None:
        with request.app.state.session_factory() as session:
            citations = {message.id: knowledge.citations(session=session, message=message)}
    return render_fragment(
        request,
        "partials/message.html",
        {"conversation": conversation, "message": message, "citations": citations},
    )
