"""Reading conversations: the chat page, the sidebar's search, one conversation, its export."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Request, Response, status

from app.chat import editing, export, history, knowledge
from app.chat.web import ConversationDep, page_context
from app.deps import AdaptersDep, CurrentUser, SessionDep, SettingsDep
from app.store import crud
from app.web.templating import render

router = APIRouter()
SEARCH_MAX_CHARS = 200


@router.get("/")
def index(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    adapters: AdaptersDep,
    settings: SettingsDep,
) -> Response:
    context = page_context(request, session, user, adapters, settings, None)
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
    context = page_context(request, session, user, adapters, settings, None)
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
    context = page_context(request, session, user, adapters, settings, conversation)
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
