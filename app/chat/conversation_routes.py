"""Changing a conversation: its adapter, settings and knowledge bases, its title, deleting it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response, status

from app.chat import editing, knowledge, service
from app.chat.schemas import ChatInputError
from app.chat.web import ConversationDep, KnowledgeChoice, input_error, knowledge_context, redirect
from app.deps import AdaptersDep, CurrentUser, SessionDep, SettingsDep, StreamsDep
from app.groups import service as groups
from app.web.templating import is_htmx, render

router = APIRouter()


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
        return input_error(request, exc)
    service.choose_adapter(session=session, conversation=conversation, choice=choice)
    if not is_htmx(request):
        return redirect(request, f"/c/{conversation.id}")
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
            return input_error(request, exc)
        error = str(exc)
    if not is_htmx(request):
        return redirect(request, f"/c/{conversation.id}")
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
        return input_error(request, exc)
    knowledge.choose_knowledge_bases(
        session=session, conversation=conversation, knowledge_base_ids=chosen
    )
    if not is_htmx(request):
        return redirect(request, f"/c/{conversation.id}")
    return render(
        request,
        "partials/knowledge_choice.html",
        {
            "conversation": conversation,
            "picker_open": True,
            **knowledge_context(session, user, conversation),
        },
        block="knowledge_choice",
    )


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
        return input_error(request, exc)
    return redirect(request, f"/c/{conversation.id}")


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
    return redirect(request, "/")
