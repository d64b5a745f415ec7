"""Chat pages, fragments and the answer stream. Thin: validate, call the service, render."""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response, status
from fastapi.responses import RedirectResponse
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from app.answers.kinds import CHAT
from app.answers.lifecycle import Answer
from app.chat import editing, export, history, knowledge, service
from app.chat.schemas import ChatInputError
from app.deps import (
    AdaptersDep,
    AnswersDep,
    CurrentUser,
    KnowledgeDep,
    SessionDep,
    SettingsDep,
    StreamsDep,
    message_allowed,
)
from app.groups import service as groups
from app.improve.feedback import feedback_for
from app.ops.requests import client_ip
from app.store import crud
from app.store.models import Conversation, Message, User
from app.web.calculations import answer_html, token_html
from app.web.errors import error_page
from app.web.templating import is_htmx, render, render_fragment, templates

# CSRF is checked by CurrentUser (every route here needs it), after the sign-in check.
router = APIRouter()
templates.env.globals["answer_ending"] = export.ending
HTML_EVERY_S = 0.15
"""While an answer streams, its text is rendered as Markdown at most this often (each render
covers the whole text so far; the final render comes with `done`)."""
SEARCH_MAX_CHARS = 200


def _conversation_or_404(
    session: SessionDep, user: CurrentUser, conversation_id: str
) -> Conversation:
    conversation = crud.get_conversation(
        session=session, user_id=user.id, conversation_id=conversation_id
    )
    if conversation is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such conversation.")
    return conversation


ConversationDep = Annotated[Conversation, Depends(_conversation_or_404)]
KnowledgeChoice = Annotated[list[int], Form(alias="knowledge_base")]
"""The picker's checked knowledge bases (none checked: the field is absent)."""


def _knowledge_context(
    session: SessionDep, user: User, conversation: Conversation | None
) -> dict[str, object]:
    """What the knowledge picker and the citations under answers need."""
    return {
        "knowledge_choices": knowledge.knowledge_choices(session=session, user=user),
        "chosen_bases": []
        if conversation is None
        else knowledge.conversation_knowledge_bases(
            session=session, conversation=conversation, user=user
        ),
        "citations": {}
        if conversation is None
        else knowledge.conversation_citations(session=session, conversation=conversation),
    }


def _page_context(
    request: Request,
    session: SessionDep,
    user: User,
    adapters: AdaptersDep,
    settings: SettingsDep,
    conversation: Conversation | None,
) -> dict[str, object]:
    """What the chat page needs: the sidebar by date, the pickers, the server's limits."""
    conversations = crud.list_conversations(session=session, user_id=user.id)
    return {
        "conversation_groups": history.by_date(conversations, history.reader_zone(request)),
        "conversation": conversation,
        "adapter_choices": groups.visible_choices(session=session, user=user, adapters=adapters),
        "limits": settings,
        "feedbacks": {}
        if conversation is None
        else feedback_for(
            session=session,
            user_id=user.id,
            message_ids=[m.id for m in conversation.messages if m.role == "assistant"],
        ),
        **_knowledge_context(session, user, conversation),
    }


def _redirect(request: Request, url: str) -> Response:
    """HTMX follows `HX-Redirect` with a full page load; plain forms follow a 303."""
    if is_htmx(request):
        return Response(status_code=status.HTTP_204_NO_CONTENT, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)


def _input_error(
    request: Request, exc: ChatInputError, *, target: str = "#composer-error"
) -> Response:
    """The sentence saying what to fix: where the form shows errors (HTMX, the text typed
    stays), or a page with a way back (a plain form post)."""
    if not is_htmx(request):
        return error_page(request, status.HTTP_400_BAD_REQUEST, str(exc))
    return render(
        request,
        "partials/error.html",
        {"error": str(exc)},
        block="error",
        status_code=status.HTTP_400_BAD_REQUEST,
        headers={"HX-Retarget": target, "HX-Reswap": "innerHTML"},
    )


@router.get("/")
def index(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    adapters: AdaptersDep,
    settings: SettingsDep,
) -> Response:
    context = _page_context(request, session, user, adapters, settings, None)
    return render(request, "chat.html", context)


@router.get("/search")
def search(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    adapters: AdaptersDep,
    settings: SettingsDep,
    q: str = "",
) -> Response:
    """The user's conversations whose title or messages contain `q` (the sidebar's search box:
    HTMX gets the result list alone, a plain request the whole page with it)."""
    query = " ".join(q.split())[:SEARCH_MAX_CHARS]
    results = (
        history.search_results(
            crud.search_conversations(session=session, user_id=user.id, text=query),
            query,
            history.reader_zone(request),
        )
        if query
        else None
    )
    context = _page_context(request, session, user, adapters, settings, None)
    context |= {"search_query": query, "search_results": results}
    return render(request, "chat.html", context, block="sidebar_list")


@router.get("/c/{conversation_id}")
def show_conversation(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    conversation: ConversationDep,
    adapters: AdaptersDep,
    settings: SettingsDep,
) -> Response:
    context = _page_context(request, session, user, adapters, settings, conversation)
    return render(request, "chat.html", context, block="conversation")


@router.get("/c/{conversation_id}/export.{fmt}")
def export_conversation(
    session: SessionDep, user: CurrentUser, conversation: ConversationDep, fmt: str
) -> Response:
    """The conversation as a Markdown or JSON download (audited: its text leaves the server)."""
    if fmt not in ("md", "json"):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Export as .md or .json.")
    citations = knowledge.conversation_citations(session=session, conversation=conversation)
    now = datetime.now(UTC).replace(tzinfo=None)
    if fmt == "md":
        body, media = export.as_markdown(conversation, citations, now), "text/markdown"
    else:
        body, media = export.as_json(conversation, citations, now), "application/json"
    editing.record_export(session=session, conversation=conversation, fmt=fmt, actor_id=user.id)
    name = export.file_name(conversation, fmt)
    return Response(
        body,
        media_type=f"{media}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.post("/c/{conversation_id}/adapter")
def choose_adapter(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    conversation: ConversationDep,
    adapters: AdaptersDep,
    adapter: Annotated[str, Form()] = "",
) -> Response:
    """The adapter (or bare base model) that answers this conversation from now on."""
    try:
        choice = service.checked_adapter_choice(adapters, adapter, session=session, user=user)
    except ChatInputError as exc:
        return _input_error(request, exc)
    service.choose_adapter(session=session, conversation=conversation, choice=choice)
    if not is_htmx(request):
        return _redirect(request, f"/c/{conversation.id}")
    return render(
        request,
        "partials/adapter_choice.html",
        {
            "conversation": conversation,
            "adapter_choices": groups.visible_choices(
                session=session, user=user, adapters=adapters
            ),
            "saved": True,
        },
        block="adapter_choice",
    )


@router.post("/c/{conversation_id}/settings")
def save_settings(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    conversation: ConversationDep,
    temperature: Annotated[str, Form(max_length=40)] = "",
    max_new_tokens: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    """This conversation's temperature and answer length, from its next answer on."""
    error = ""
    try:
        editing.update_settings(
            session=session,
            conversation=conversation,
            settings=settings,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
        )
    except ChatInputError as exc:
        if not is_htmx(request):
            return _input_error(request, exc)
        error = str(exc)
    if not is_htmx(request):
        return _redirect(request, f"/c/{conversation.id}")
    return render(
        request,
        "partials/chat_settings.html",
        {
            "conversation": conversation,
            "limits": settings,
            "saved": not error,
            "settings_error": error,
            "typed": {"temperature": temperature, "max_new_tokens": max_new_tokens},
        },
        block="chat_settings",
        status_code=status.HTTP_400_BAD_REQUEST if error else status.HTTP_200_OK,
    )


@router.post("/c/{conversation_id}/knowledge")
def choose_knowledge(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    conversation: ConversationDep,
    knowledge_base: KnowledgeChoice = [],  # noqa: B006 - FastAPI copies defaults
) -> Response:
    """The knowledge bases this conversation answers from, from the next question on."""
    try:
        chosen = knowledge.checked_knowledge_choice(
            session=session, user=user, values=knowledge_base
        )
    except ChatInputError as exc:
        return _input_error(request, exc)
    knowledge.choose_knowledge_bases(
        session=session, conversation=conversation, knowledge_base_ids=chosen
    )
    if not is_htmx(request):
        return _redirect(request, f"/c/{conversation.id}")
    return render(
        request,
        "partials/knowledge_choice.html",
        {
            "conversation": conversation,
            "picker_open": True,
            **_knowledge_context(session, user, conversation),
        },
        block="knowledge_choice",
    )


@router.post("/c", dependencies=[Depends(message_allowed)])
def new_conversation(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    adapters: AdaptersDep,
    content: Annotated[str, Form()],
    adapter: Annotated[str, Form()] = "",
    knowledge_base: KnowledgeChoice = [],  # noqa: B006 - FastAPI copies defaults
) -> Response:
    try:
        conversation, _, _ = service.start_turn(
            session=session,
            user=user,
            conversation=None,
            content=content,
            settings=settings,
            adapter=service.checked_adapter_choice(adapters, adapter, session=session, user=user),
            knowledge_base_ids=knowledge.checked_knowledge_choice(
                session=session, user=user, values=knowledge_base
            ),
        )
    except ChatInputError as exc:
        return _input_error(request, exc)
    return _redirect(request, f"/c/{conversation.id}")


@router.post("/c/{conversation_id}/messages", dependencies=[Depends(message_allowed)])
def send_message(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    conversation: ConversationDep,
    content: Annotated[str, Form()],
) -> Response:
    try:
        _, question, answer = service.start_turn(
            session=session,
            user=user,
            conversation=conversation,
            content=content,
            settings=settings,
        )
    except ChatInputError as exc:
        return _input_error(request, exc)
    if not is_htmx(request):
        return _redirect(request, f"/c/{conversation.id}")
    return render(
        request,
        "partials/turn.html",
        {"conversation": conversation, "messages": [question, answer]},
        block="turn",
    )


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
    message = crud.get_message(session=session, conversation=conversation, message_id=message_id)
    if message is None or message.role != "assistant":
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such answer in this conversation.")
    session.close()
    answer = Answer.reserve(
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

    # The answer closes itself before "done"; this closes it if the stream never started.
    return EventSourceResponse(
        events(), ping=15, send_timeout=30, background=BackgroundTask(answer.close_now)
    )


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


@router.post("/c/{conversation_id}/messages/{message_id}/stop")
def stop_message(
    session: SessionDep, conversation: ConversationDep, streams: StreamsDep, message_id: int
) -> Response:
    """Stop an answer in one of the caller's conversations; a message of another is a 404."""
    if crud.get_message(session=session, conversation=conversation, message_id=message_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such answer in this conversation.")
    streams.stop(conversation_id=conversation.id, message_id=message_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/c/{conversation_id}/regenerate", dependencies=[Depends(message_allowed)])
def regenerate(request: Request, session: SessionDep, conversation: ConversationDep) -> Response:
    try:
        answer = service.regenerate(session=session, conversation=conversation)
    except ChatInputError as exc:
        return _input_error(request, exc)
    if not is_htmx(request):
        return _redirect(request, f"/c/{conversation.id}")
    return render(
        request,
        "partials/turn.html",
        {"conversation": conversation, "messages": [answer]},
        block="turn",
    )


@router.post(
    "/c/{conversation_id}/messages/{message_id}/edit", dependencies=[Depends(message_allowed)]
)
def edit_message(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
    conversation: ConversationDep,
    message_id: int,
    content: Annotated[str, Form()],
) -> Response:
    """Replace a question (and the turns after it) with its edited text; answered anew."""
    try:
        editing.edit_and_resend(
            session=session,
            user=user,
            conversation=conversation,
            message_id=message_id,
            content=content,
            settings=settings,
        )
    except ChatInputError as exc:
        return _input_error(request, exc, target=f"#edit-error-{message_id}")
    return _redirect(request, f"/c/{conversation.id}")


@router.post("/c/{conversation_id}/rename")
def rename(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    conversation: ConversationDep,
    title: Annotated[str, Form()],
) -> Response:
    try:
        service.rename_conversation(
            session=session, conversation=conversation, title=title, actor_id=user.id
        )
    except ChatInputError as exc:
        return _input_error(request, exc)
    return _redirect(request, f"/c/{conversation.id}")


@router.post("/c/{conversation_id}/delete")
def delete(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    streams: StreamsDep,
    conversation: ConversationDep,
) -> Response:
    service.delete_conversation(
        session=session, conversation=conversation, streams=streams, actor_id=user.id
    )
    return _redirect(request, "/")
