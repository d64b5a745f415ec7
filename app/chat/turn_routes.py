"""Asking: a new conversation, a question, a regenerated answer, an edited question, Stop."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response, status

from app.chat import editing, knowledge, service
from app.chat.schemas import ChatInputError
from app.chat.web import ConversationDep, KnowledgeChoice, input_error, redirect
from app.deps import (
    AdaptersDep,
    CurrentUser,
    SessionDep,
    SettingsDep,
    StreamsDep,
    message_allowed,
)
from app.store import crud
from app.store.models import Conversation, Message
from app.web.templating import is_htmx, render

router = APIRouter()


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
        return input_error(request, exc)
    return redirect(request, f"/c/{conversation.id}")


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
        return input_error(request, exc)
    return _turn(request, conversation, [question, answer])


def _turn(request: Request, conversation: Conversation, messages: list[Message]) -> Response:
    """The new messages as the page appends them (HTMX; the answer's stream starts from
    there), or the conversation page again (a plain form post)."""
    if not is_htmx(request):
        return redirect(request, f"/c/{conversation.id}")
    return render(
        request,
        "partials/turn.html",
        {"conversation": conversation, "messages": messages},
        block="turn",
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
        return input_error(request, exc)
    return _turn(request, conversation, [answer])


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
        return input_error(request, exc, target=f"#edit-error-{message_id}")
    return redirect(request, f"/c/{conversation.id}")
