"""`/v1/models`, `/v1/chat/completions`, `/v1/completions`: bearer keys, OpenAI's shapes.

Thin: authenticate, validate, hand the call to the service, and write its events as one JSON
body or as `data:` chunks ending with `data: [DONE]`. Bodies are validated here rather than by
FastAPI so that every error, a malformed body included, comes back in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session, sessionmaker
from starlette.background import BackgroundTask

from app.answers.lifecycle import Answer, AnswerContext
from app.audit import service as audit
from app.deps import KnowledgeDep
from app.engine.types import OutOfMemory, TokenEvent
from app.groups import service as groups
from app.improve.feedback import FeedbackError, api_call_answer, set_feedback
from app.improve.schemas import ApiFeedback, ApiFeedbackRequest
from app.keys import service as keys
from app.openai_api import service, structured
from app.openai_api.chunks import DONE, ChatChunks, TextChunks, sse
from app.openai_api.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChunkToolCall,
    Completion,
    CompletionRequest,
    Delta,
    ModelCard,
    ModelList,
    OpenAIError,
    TextChoice,
    Usage,
    completion_id,
    now,
)
from app.openai_api.service import Caller, unavailable
from app.ops.body_limit import BodyTooLarge
from app.ops.oom import MESSAGE as OUT_OF_MEMORY_MESSAGE
from app.ops.requests import client_ip
from app.store.models import User

router = APIRouter(prefix="/v1")
Body = TypeVar("Body", bound=BaseModel)
API_MODELS = "api.models"
"""A key listed the models (or looked one up)."""
API_REFUSED = "api.refused"
"""A call refused before any answer started (bad body or field, unknown model or knowledge
base, too large). Over-limit calls have `limits.rate_limited`; calls that started have their
`api.call_started` / `api.call` pair, failures included."""
AUDITED_REFUSALS = frozenset({400, 404, 413, 422})
CALL_ID_HEADER = "x-teller-call-id"
"""On every answer: the call id of its audit rows, which `POST /v1/feedback` takes."""


async def openai_error_handler(request: Request, exc: Exception) -> Response:
    """Registered in `app.main` for `OpenAIError`."""
    assert isinstance(exc, OpenAIError)  # noqa: S101 - registered for this type only
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def api_caller(request: Request) -> Caller:
    """The key's owner, or 401 in OpenAI's shape (missing, unknown or revoked key).

    The database is read on the event loop's worker threads, where the answer's own rows are
    written: a burst of calls then uses as many connections as those threads, not one per
    call (sync dependencies run on a pool of 40).
    """
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise OpenAIError(
            401,
            "Missing API key: send 'Authorization: Bearer <key>' (create one at /settings/keys).",
            code="invalid_api_key",
        )
    caller = await asyncio.to_thread(
        _key_owner, request.app.state.session_factory, secret.strip(), client_ip(request)
    )
    if caller is None:
        raise OpenAIError(401, "Invalid or revoked API key.", code="invalid_api_key")
    return caller


def _key_owner(
    session_factory: sessionmaker[Session], secret: str, ip: str | None
) -> Caller | None:
    with session_factory() as session:
        owner = keys.key_owner(session=session, secret=secret)
        if owner is None:
            return None
        access = groups.access_of(
            session=session,
            user_id=owner.user_id,
            role=owner.role,
            groups_exist=owner.groups_exist,
        )
        return Caller(
            owner.user_id, owner.username, owner.key_id, ip, access, quotas=owner.quotas_exist
        )


async def api_context(request: Request) -> AnswerContext:
    """What an answer needs; 503 in OpenAI's shape while the model loads (async: it only
    reads `app.state`, and a plain `def` would take a thread-pool hop per call)."""
    answers = getattr(request.app.state, "answers", None)
    if answers is None:
        raise OpenAIError(
            503, "The model is still loading.", type="server_error", headers={"Retry-After": "5"}
        )
    return answers


CallerDep = Annotated[Caller, Depends(api_caller)]
ContextDep = Annotated[AnswerContext, Depends(api_context)]


def _audit(request: Request, caller: Caller, action: str, details: dict[str, Any]) -> None:
    with request.app.state.session_factory() as session:
        audit.record_event(
            session=session,
            action=action,
            actor_id=caller.user_id,
            details={"key_id": caller.key_id, "ip": caller.ip, **details},
        )


@contextlib.asynccontextmanager
async def refusals_audited(request: Request, caller: Caller, endpoint: str) -> AsyncIterator[None]:
    """Write an `api.refused` row for a call refused inside (then let the error answer)."""
    try:
        yield
    except OpenAIError as exc:
        if exc.status_code in AUDITED_REFUSALS:
            details = {
                "endpoint": endpoint,
                "status": exc.status_code,
                "code": exc.code,
                "param": exc.param,
                "message": exc.message,
            }
            await asyncio.to_thread(_audit, request, caller, API_REFUSED, details)
        raise


async def parse_body(request: Request, model: type[Body]) -> Body:
    """The JSON body as `model`, 400 naming the first bad field, or 413 for a body over the
    server's limit (refused by `app.ops.body_limit` before it is read)."""
    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise OpenAIError(400, "The request body is not valid JSON.") from None
    except BodyTooLarge as exc:
        raise OpenAIError(413, exc.detail, code="request_too_large") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = str(first["msg"]).removeprefix("Value error, ")
        where = f" ({param})" if param else ""
        raise OpenAIError(400, f"Invalid request{where}: {message}.", param=param) from None


# ---- models -------------------------------------------------------------------------------


@router.get("/models")
def list_models(request: Request, caller: CallerDep, ctx: ContextDep) -> ModelList:
    ids = service.model_ids(ctx.engine, ctx.adapters, caller.access)
    _audit(request, caller, API_MODELS, {"endpoint": "models", "models": len(ids)})
    return ModelList(data=[ModelCard(id=i) for i in ids])


@router.get("/models/{model_id:path}")
def get_model(request: Request, model_id: str, caller: CallerDep, ctx: ContextDep) -> ModelCard:
    details = {"endpoint": "models", "model": model_id}
    try:
        service.resolve_model(model_id, ctx.engine, ctx.adapters, caller.access)
    except OpenAIError as exc:
        _audit(request, caller, API_REFUSED, {**details, "status": exc.status_code})
        raise
    _audit(request, caller, API_MODELS, details)
    return ModelCard(id=model_id)


# ---- generation ---------------------------------------------------------------------------


def _finish_reason(call: Answer) -> str:
    return "length" if call.finish is not None and call.finish.reason == "length" else "stop"


def _usage(call: Answer) -> Usage:
    finish = call.finish
    return Usage.of(
        finish.prompt_tokens if finish else 0, finish.completion_tokens if finish else 0
    )


async def _collect(request: Request, call: Answer) -> None:
    """Read the whole answer; a client that hangs up meanwhile cancels the generation.

    The disconnect is awaited with a blocking `receive()` (as Starlette's streaming responses
    do): a polling `is_disconnected()` never sees it behind an HTTP middleware.
    """

    async def drain() -> None:
        async for _ in call.events():
            pass

    async def hang_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    answer, listener = asyncio.create_task(drain()), asyncio.create_task(hang_up())
    try:
        await asyncio.wait({answer, listener}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (answer, listener):
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await call.close()
    if answer.cancelled():
        return
    answer.result()
    if isinstance(call.failure, OutOfMemory):
        raise unavailable(OUT_OF_MEMORY_MESSAGE, "out_of_memory")
    if call.error:
        raise OpenAIError(500, f"Generation failed: {call.error}", type="server_error")


def _error_chunk(call: Answer) -> str:
    error = OpenAIError(500, f"Generation failed: {call.error}", type="server_error")
    return sse(error.body())


def _call_header(call: Answer) -> dict[str, str]:
    """The call's id, which `POST /v1/feedback` takes to rate this answer."""
    return {CALL_ID_HEADER: str(call.details.get("call_id", ""))}


def _stream(call: Answer, chunks: AsyncIterator[str]) -> StreamingResponse:
    """SSE response; the call is closed (its end audited) before the last byte goes out, and
    by the background task if the body never started (an async task: a sync one would take a
    thread-pool hop on every call only to find the call closed)."""

    async def closing() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                if chunk == DONE:
                    await call.close()
                yield chunk
        finally:
            await call.close()

    return StreamingResponse(
        closing(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **_call_header(call)},
        background=BackgroundTask(call.close),
    )


@router.post("/chat/completions")
async def chat_completions(
    request: Request, caller: CallerDep, ctx: ContextDep, knowledge: KnowledgeDep
) -> Response:
    async with refusals_audited(request, caller, "chat.completions"):
        body = await parse_body(request, ChatCompletionRequest)
        plan = structured.plan(body)
        messages = structured.messages_for(structured.conversation(body, plan.tools_offered))
        service.check_input_size([m.content for m in messages], ctx.settings)
        call, grounding = await service.open_call(
            ctx=ctx,
            caller=caller,
            endpoint="chat.completions",
            model=body.model,
            sampling=service.sampling_for(body, body.token_limit, ctx.settings),
            stream=body.stream,
            messages=messages,
            knowledge_runtime=knowledge,
            knowledge_bases=body.knowledge_bases or (),
            constraint=plan.grammar,
        )
    sources = service.sources(grounding) if grounding is not None else None
    no_sources = {"sources"} if sources is None else set()
    ident, created = completion_id("chatcmpl"), now()
    if not body.stream:
        await _collect(request, call)
        text = "".join(call.parts)
        tool_call = structured.parse_tool_call(text) if plan.tools_offered else None
        message = (
            AssistantMessage(content=None, tool_calls=[tool_call])
            if tool_call
            else AssistantMessage(content=text)
        )
        return JSONResponse(
            ChatCompletion(
                id=ident,
                created=created,
                model=body.model,
                choices=[
                    ChatChoice(
                        message=message,
                        finish_reason="tool_calls" if tool_call else _finish_reason(call),
                    )
                ],
                usage=_usage(call),
                sources=sources,
            ).model_dump(exclude=no_sources),
            headers=_call_header(call),
        )

    out = ChatChunks(
        ident=ident,
        created=created,
        model=body.model,
        include_usage=body.include_usage,
        sources=sources,
    )

    async def chunks() -> AsyncIterator[str]:
        yield out.chunk(Delta(role="assistant", content=""))
        held, deciding = "", plan.tools_offered  # a tool call is sent whole, once complete
        async for event in call.events():
            if not isinstance(event, TokenEvent):
                continue
            if not deciding:
                yield out.text(event.text)
                continue
            held += event.text
            if held.strip() and not held.lstrip().startswith("<"):
                deciding = False
                yield out.text(held)
        tool_call = structured.parse_tool_call(held) if deciding and held else None
        if tool_call:
            yield out.chunk(Delta(tool_calls=[ChunkToolCall(index=0, **tool_call.model_dump())]))
        elif deciding and held:
            yield out.text(held)
        if call.error:
            yield _error_chunk(call)
        else:
            reason = "tool_calls" if tool_call else _finish_reason(call)
            yield out.chunk(Delta(), reason, last=not body.include_usage)
            if body.include_usage:
                yield out.usage(_usage(call))
        yield DONE

    return _stream(call, chunks())


@router.post("/completions")
async def completions(request: Request, caller: CallerDep, ctx: ContextDep) -> Response:
    async with refusals_audited(request, caller, "completions"):
        body = await parse_body(request, CompletionRequest)
        service.check_input_size([body.prompt_text], ctx.settings, param="prompt")
        call, _ = await service.open_call(
            ctx=ctx,
            caller=caller,
            endpoint="completions",
            model=body.model,
            sampling=service.sampling_for(body, body.max_tokens, ctx.settings),
            stream=body.stream,
            prompt=body.prompt_text,
        )
    ident, created = completion_id("cmpl"), now()
    if not body.stream:
        await _collect(request, call)
        return JSONResponse(
            Completion(
                id=ident,
                created=created,
                model=body.model,
                choices=[TextChoice(text="".join(call.parts), finish_reason=_finish_reason(call))],
                usage=_usage(call),
            ).model_dump(),
            headers=_call_header(call),
        )

    out = TextChunks(ident=ident, created=created, model=body.model)

    async def chunks() -> AsyncIterator[str]:
        async for event in call.events():
            if isinstance(event, TokenEvent):
                yield out.text(event.text)
        if call.error:
            yield _error_chunk(call)
        else:
            yield out.chunk("", _finish_reason(call))
            if body.include_usage:
                yield out.usage(_usage(call))
        yield DONE

    return _stream(call, chunks())


# ---- feedback -----------------------------------------------------------------------------


@router.post("/feedback")
async def feedback(request: Request, caller: CallerDep, ctx: ContextDep) -> ApiFeedback:
    """Rate a finished answer by its `x-teller-call-id` (docs/improvement-loop.md)."""
    body = await parse_body(request, ApiFeedbackRequest)

    def store() -> ApiFeedback:
        with ctx.session_factory() as session:
            user = session.get(User, caller.user_id)
            assert user is not None  # noqa: S101 - the key's owner, checked by CallerDep
            answer = api_call_answer(session=session, user=user, call_id=body.call_id)
            row = set_feedback(
                session=session,
                user=user,
                message_id=answer.id,
                rating=body.rating,
                comment=body.comment,
                correction=body.correction,
                via="api",
            )
            session.commit()
            return ApiFeedback(
                id=row.id,
                call_id=answer.conversation_id,
                message_id=answer.id,
                rating=body.rating,
                has_correction=bool(row.correction),
            )

    try:
        return await asyncio.to_thread(store)
    except FeedbackError as exc:
        code = "call_not_found" if exc.status == 404 else None
        raise OpenAIError(exc.status, str(exc), param="call_id", code=code) from None
