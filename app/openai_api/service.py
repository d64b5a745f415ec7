"""`/v1` rules: model ids → adapters, request limits, and starting an answer.

The answer itself — the user's slot, the adapter lease, the engine call, its audit rows
(`api.call_started` before generation, `api.call` at the end, paired by `call_id`) and
metrics — is the one lifecycle of `app.answers`; this module adds what is OpenAI's: model
ids, sampling fields and the HTTP statuses a failed start becomes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.adapters.errors import AdapterError
from app.adapters.service import BASE_CHOICE, AdapterService
from app.answers.input_limits import InputTooLong, TooManyMessages, check_input
from app.answers.kinds import API
from app.answers.lifecycle import NOT_RECORDED, Answer, AnswerContext, AnswerNotRecorded
from app.answers.limits import LimitExceeded
from app.config import Settings
from app.contract import ChatMessage
from app.engine.constraints import Grammar
from app.engine.types import (
    Engine,
    EngineBusy,
    EngineError,
    FinishEvent,
    GenerationRequest,
    OutOfMemory,
    SamplingParams,
    UpstreamError,
)
from app.groups.service import EVERYTHING, Access, choice_name, visible_model_ids
from app.knowledge import service as knowledge
from app.knowledge.grounding import Grounding, KnowledgeUnavailable, ground
from app.knowledge.worker import KnowledgeRuntime
from app.openai_api.schemas import OpenAIError, Source, _Sampling
from app.ops.oom import MESSAGE as OUT_OF_MEMORY_MESSAGE
from app.ops.oom import RETRY_AFTER_SECONDS
from app.store import knowledge_crud
from app.store.models import User


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's owner (plain values, safe to keep past the DB session)."""

    user_id: int
    username: str
    key_id: int
    ip: str | None
    access: Access = EVERYTHING
    """The adapters the key's owner may use now (their groups' grants; None: all)."""
    quotas: bool = True
    """Whether a token quota applies to the key's owner, as the key check read it (False:
    the reservation need not read their usage)."""


# ---- model ids ----------------------------------------------------------------------------


def base_model_id(engine: Engine) -> str:
    """A short, stable id for the served base: its folder or repo name (`falcon-7b`)."""
    source = engine.info.model.rstrip("/")
    name = PurePath(source).name or source
    return name.removesuffix(".gguf")


def model_ids(
    engine: Engine, adapters: AdapterService | None, access: Access = EVERYTHING
) -> list[str]:
    """The base model, then every adapter as NAME (its current version) and NAME@VERSION;
    only those `access` allows (a user's groups' grants)."""
    ids = [base_model_id(engine)]
    if adapters is not None:
        versions = adapters.registry.versions()
        for name in adapters.registry.names():
            ids.append(name)
            ids.extend(v.ref for v in versions if v.name == name)
    return visible_model_ids(access, ids, {ids[0]})


def resolve_model(
    model: str, engine: Engine, adapters: AdapterService | None, access: Access = EVERYTHING
) -> str:
    """The adapter choice a model id means (`base` for the bare base model).

    Raises:
        OpenAIError: 404 when no base model or adapter version has this id, or `access` does
            not allow it (the same answer: a model one may not use is absent).
    """
    if model in (base_model_id(engine), engine.info.model):
        if access.may_use_adapter(BASE_CHOICE):
            return BASE_CHOICE
    elif (
        adapters is not None and model != BASE_CHOICE and access.may_use_adapter(choice_name(model))
    ):
        try:
            adapters.resolve(model)
            return model
        except AdapterError:
            pass
    raise OpenAIError(
        404,
        f"The model '{model}' does not exist; GET /v1/models lists the ones served here.",
        param="model",
        code="model_not_found",
    )


# ---- requests -----------------------------------------------------------------------------


def sampling_for(params: _Sampling, token_limit: int | None, settings: Settings) -> SamplingParams:
    """The request's sampling, server defaults where it says nothing; never more tokens than
    the server allows (a larger `max_tokens` is capped, as the chat page is)."""
    limit = min(token_limit or settings.max_new_tokens, settings.max_new_tokens)
    return SamplingParams(
        temperature=settings.default_temperature
        if params.temperature is None
        else params.temperature,
        top_p=settings.default_top_p if params.top_p is None else params.top_p,
        max_new_tokens=limit,
        stop=params.stop_strings(),
        seed=params.seed,
    )


def check_input_size(texts: Sequence[str], settings: Settings, *, param: str = "messages") -> None:
    """Raises OpenAIError (400) when there are more messages, or more input, than the server
    accepts (every message counts, an empty one too: see `app.answers.input_limits`)."""
    try:
        check_input(texts, settings, noun=param)
    except TooManyMessages as exc:
        raise OpenAIError(400, str(exc), param=param, code="array_above_max_length") from None
    except InputTooLong as exc:
        raise OpenAIError(400, str(exc), param=param, code="context_length_exceeded") from None


# ---- knowledge bases (the `knowledge_bases` extension field) -------------------------------


def knowledge_base_ids(
    *, session_factory: sessionmaker[Session], caller: Caller, names: Sequence[str]
) -> list[int]:
    """The ids of the knowledge bases a request names (by name, or by id as digits).

    Raises:
        OpenAIError: 404 when one does not exist or the caller may not see it (the same
            answer for both, so a name cannot be probed).
    """
    with session_factory() as session:
        user = session.get(User, caller.user_id)
        found: dict[str, int | None] = {}
        for name in names:
            base = knowledge_crud.find_knowledge_base(session=session, name=name)
            if base is None and name.isdigit():
                base = knowledge_crud.get_knowledge_base(
                    session=session, knowledge_base_id=int(name)
                )
            found[name] = base.id if base is not None else None
        requested = [i for i in found.values() if i is not None]
        usable = set(
            knowledge.usable_knowledge_base_ids(session=session, user=user, requested=requested)
            if user is not None
            else []
        )
    for name, base_id in found.items():
        if base_id not in usable:
            raise OpenAIError(
                404,
                f"The knowledge base '{name}' does not exist.",
                param="knowledge_bases",
                code="knowledge_base_not_found",
            )
    return list(dict.fromkeys(usable_id for usable_id in found.values() if usable_id is not None))


def sources(grounding: Grounding) -> list[Source]:
    """The passages an answer was given, as the response's `sources`."""
    return [
        Source(
            number=number,
            document=p.document_title,
            filename=p.filename,
            document_sha256=p.document_sha256,
            page=p.page,
            location=p.location,
            section=p.section,
            chunk_id=p.chunk_id,
            score=p.score,
            text=p.text,
        )
        for number, p in enumerate(grounding.passages, start=1)
    ]


# ---- one call -----------------------------------------------------------------------------


async def open_call(
    *,
    ctx: AnswerContext,
    caller: Caller,
    endpoint: str,
    model: str,
    sampling: SamplingParams,
    stream: bool,
    messages: Sequence[ChatMessage] = (),
    prompt: str | None = None,
    knowledge_runtime: KnowledgeRuntime | None = None,
    knowledge_bases: Sequence[str] = (),
    constraint: Grammar | None = None,
) -> tuple[Answer, Grounding | None]:
    """Check the model, take the user's slot, start the answer and wait for its first event, so
    a busy or failing engine becomes an HTTP status before any byte of the answer is sent.

    With `knowledge_bases` (chat only), the question is answered from their passages
    (`app.knowledge.grounding`), searched once the slot is taken; the grounding comes back
    with the answer so the response can list its sources.

    The caller iterates `answer.events()` and always closes the answer.

    Raises:
        OpenAIError: 404 unknown model or knowledge base, 429 over the user's limits (with
            Retry-After), 503 engine busy, out of memory or the search failed (with
            Retry-After), 502 upstream failed, 500 the engine refused the request.
    """
    choice = resolve_model(model, ctx.engine, ctx.adapters, caller.access)
    base_ids: list[int] = []
    if knowledge_bases and knowledge_runtime is not None:
        base_ids = await asyncio.to_thread(
            knowledge_base_ids,
            session_factory=ctx.session_factory,
            caller=caller,
            names=knowledge_bases,
        )
    where = {"endpoint": endpoint, "key_id": caller.key_id, "ip": caller.ip}
    try:
        answer = await Answer.reserve_off_loop(
            ctx,
            API,
            user_id=caller.user_id,
            where=where,
            count_message=True,
            quotas=caller.quotas,  # read with the key, moments ago
        )
    except LimitExceeded as exc:
        raise OpenAIError(
            429,
            exc.message,
            type="rate_limit_exceeded",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    prompt_record: Any = (
        prompt if prompt is not None else [{"role": m.role, "content": m.content} for m in messages]
    )
    # 32 random hex digits, as uuid4().hex wrote them, without the UUID object (per call).
    details = {**where, "call_id": os.urandom(16).hex(), "model": model, "stream": stream}
    grounding: Grounding | None = None
    try:
        if base_ids and knowledge_runtime is not None:
            grounding = await ground(
                session_factory=ctx.session_factory,
                knowledge=knowledge_runtime,
                knowledge_base_ids=base_ids,
                messages=messages,
                max_context_tokens=ctx.settings.max_context_tokens,
                max_new_tokens=sampling.max_new_tokens,
                count_tokens=ctx.engine.count_tokens,
            )
            messages = grounding.messages
            details.update(grounding.audit_details())
        request = GenerationRequest(
            messages=list(messages), prompt=prompt, sampling=sampling, constraint=constraint
        )
        await answer.start(
            request,
            choice=choice,
            details={**details, "prompt": prompt_record},
            log_prompt=prompt_record,
            fixed_answer=grounding.fixed_answer if grounding else None,
            access=caller.access,  # read with the key, moments ago
        )
        first = await answer.first_event()
        if isinstance(first, FinishEvent) and first.reason == "error":
            if isinstance(first.failure, OutOfMemory):
                # Nothing was sent yet: the caller gets a retryable 503, the server keeps on.
                answer.finish, answer.error = first, first.error
                raise unavailable(OUT_OF_MEMORY_MESSAGE, "out_of_memory")
    except BaseException as exc:
        answer.error = answer.error or str(exc)
        await answer.close()
        raise _as_openai_error(exc) from None
    return answer, grounding


def unavailable(message: str, code: str) -> OpenAIError:
    """A 503 the caller may retry after `RETRY_AFTER_SECONDS` (out of memory, the database or
    the knowledge search unavailable)."""
    return OpenAIError(
        503,
        message,
        type="server_error",
        code=code,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _as_openai_error(exc: BaseException) -> BaseException:
    """An engine, adapter or database failure at the start of a call, as OpenAI's error."""
    if isinstance(exc, EngineBusy):
        return OpenAIError(
            503,
            "The model is busy; retry shortly.",
            type="server_error",
            code="engine_overloaded",
            headers={"Retry-After": str(exc.retry_after)},
        )
    if isinstance(exc, AdapterError):
        return OpenAIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, UpstreamError):
        return OpenAIError(502, str(exc), type="server_error", code="upstream_error")
    if isinstance(exc, EngineError):
        return OpenAIError(500, str(exc), type="server_error")
    if isinstance(exc, (AnswerNotRecorded, SQLAlchemyError)):  # the start row, a quota read
        return unavailable(NOT_RECORDED, "database_unavailable")
    if isinstance(exc, KnowledgeUnavailable):
        return unavailable(str(exc), "knowledge_unavailable")
    return exc


def chat_messages(raw: Sequence[tuple[str, str]]) -> list[ChatMessage]:
    """OpenAI roles as the engine knows them (`developer` is a system message)."""
    return [ChatMessage("system" if role == "developer" else role, text) for role, text in raw]
