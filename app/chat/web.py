"""What the chat routes share: the conversation dependency, the page context, redirects and
the sentence saying what to fix."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Form, HTTPException, Request, Response, status
from fastapi.responses import RedirectResponse

from app.chat import history, knowledge
from app.chat.schemas import ChatInputError
from app.deps import AdaptersDep, CurrentUser, SessionDep, SettingsDep
from app.groups import service as groups
from app.improve.feedback import feedback_for
from app.store import crud
from app.store.models import Conversation, User
from app.web.errors import error_page
from app.web.templating import is_htmx, render


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
"""The caller's conversation named in the path (another user's is a 404)."""
KnowledgeChoice = Annotated[list[int], Form(alias="knowledge_base")]
"""The picker's checked knowledge bases (none checked: the field is absent)."""


def knowledge_context(
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


def page_context(
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
        **knowledge_context(session, user, conversation),
    }


def redirect(request: Request, url: str) -> Response:
    """HTMX follows `HX-Redirect` with a full page load; plain forms follow a 303."""
    if is_htmx(request):
        return Response(status_code=status.HTTP_204_NO_CONTENT, headers={"HX-Redirect": url})
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)


def input_error(
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
