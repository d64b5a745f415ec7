"""`/v1` rules: model ids → adapters, limits, the engine call, and its audit rows.

A call holds three things while it runs — one of the user's generation slots, a lease on its
adapter version, and the engine request — and `ApiCall.close` gives all three back whatever
ended it: the answer finishing, an error, or a client that disconnected mid-stream (which also
sets the request's cancel signal, so the engine stops generating at its next token). It is
registered in `ActiveStreams` meanwhile, so shutdown and disabling its owner end it too.

Audit: `api.call_started` (who, key, address, model, prompt) is written before generation
starts and `api.call` (the result) when the call ends, both carrying the same `call_id`; a
call cut by a crash keeps its first row and gets `api.call_interrupted` at the next start
(`app.answers.recovery`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.adapters.errors import AdapterError
from app.adapters.service import BASE_CHOICE, AdapterService, Lease
from app.answers.input_limits import InputTooLong, TooManyMessages, check_input
from app.answers.owner import OWNER_CHECK_SECONDS, owner_disabled
from app.answers.recovery import API_CALL_STARTED
from app.answers.streams import ActiveStreams, Running
from app.audit import service as audit
from app.auth.limits import LimitExceeded, UserLimits
from app.config import Settings
from app.contract import ChatMessage
from app.engine.remote import UpstreamError
from app.engine.types import (
    Engine,
    EngineBusy,
    EngineError,
    Event,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from app.openai_api.schemas import OpenAIError, _Sampling
from app.ops import metrics
from app.ops.oom import MESSAGE as OUT_OF_MEMORY_MESSAGE
from app.ops.oom import RETRY_AFTER_SECONDS, is_out_of_memory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's owner (plain values, safe to keep past the DB session)."""

    user_id: int
    username: str
    key_id: int
    ip: str | None


@dataclass
class ApiContext:
    """What a call needs from the running app (gathered once per request by the router)."""

    settings: Settings
    engine: Engine
    adapters: AdapterService | None
    limits: UserLimits
    session_factory: sessionmaker[Session]
    streams: ActiveStreams


# ---- model ids ----------------------------------------------------------------------------


def base_model_id(engine: Engine) -> str:
    """A short, stable id for the served base: its folder or repo name (`falcon-7b`)."""
    source = engine.info.model.rstrip("/")
    name = PurePath(source).name or source
    return name.removesuffix(".gguf")


def model_ids(engine: Engine, adapters: AdapterService | None) -> list[str]:
    """The base model, then every adapter as NAME (its current version) and NAME@VERSION."""
    ids = [base_model_id(engine)]
    if adapters is not None:
        versions = adapters.registry.versions()
        for name in adapters.registry.names():
            ids.append(name)
            ids.extend(v.ref for v in versions if v.name == name)
    return ids


def resolve_model(model: str, engine: Engine, adapters: AdapterService | None) -> str:
    """The adapter choice a model id means (`base` for the bare base model).

    Raises:
        OpenAIError: 404 when no base model or adapter version has this id.
    """
    if model in (base_model_id(engine), engine.info.model):
        return BASE_CHOICE
    if adapters is not None and model != BASE_CHOICE:
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


# ---- one call -----------------------------------------------------------------------------


@dataclass
class ApiCall:
    """A running generation for one `/v1` request; iterate `events()`, and always `close()`."""

    ctx: ApiContext
    caller: Caller
    endpoint: str
    model: str
    request: GenerationRequest
    prompt_record: Any
    stream: bool
    lease: Lease | None = None
    _events: AsyncIterator[Event] | None = None
    _first: Event | None = None
    _slot_held: bool = False
    _closed: bool = False
    started: float = field(default_factory=time.monotonic)
    call_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    running: Running | None = None
    owner_checked: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    parts: list[str] = field(default_factory=list)
    finish: FinishEvent | None = None
    error: str | None = None

    async def start(self) -> None:
        """Wait for the first event, so a busy or failing engine becomes an HTTP status
        (503, 502) before any byte of the answer is sent."""
        assert self._events is not None  # noqa: S101 - set by open_call
        try:
            self._first = await anext(self._events)
        except StopAsyncIteration:
            raise EngineError("the engine ended the answer without a result") from None

    async def _all_events(self) -> AsyncIterator[Event]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
            if isinstance(first, FinishEvent):
                return
        if self._events is not None:
            async for event in self._events:
                yield event

    async def events(self) -> AsyncIterator[Event]:
        """Token events, then one FinishEvent; the call closes itself when this ends."""
        try:
            async for event in self._all_events():
                if isinstance(event, TokenEvent):
                    self.first_token_at = self.first_token_at or time.monotonic()
                    self.parts.append(event.text)
                    await self._stop_if_owner_disabled()
                elif isinstance(event, FinishEvent):
                    self.finish = event
                    if event.reason == "error":
                        self.error = event.error or "generation failed"
                yield event
                if isinstance(event, FinishEvent):
                    return
        finally:
            # Release first (sync: cancel, slot, lease), then write the audit row on a worker
            # thread: the write (a few ms) would otherwise stall every other stream on this
            # event loop. Shielded, so a client that has gone cannot cancel the write.
            try:
                if self._release():
                    await asyncio.shield(asyncio.to_thread(self._record))
            finally:
                await self.aclose_events()

    async def _stop_if_owner_disabled(self) -> None:
        """Every OWNER_CHECK_SECONDS: a disabled owner's call ends (stored as stopped)."""
        if time.monotonic() - self.owner_checked < OWNER_CHECK_SECONDS:
            return
        self.owner_checked = time.monotonic()
        if await asyncio.to_thread(self._owner_disabled):
            self.request.cancel.set()

    def _owner_disabled(self) -> bool:
        with self.ctx.session_factory() as session:
            return owner_disabled(session=session, user_id=self.caller.user_id)

    async def aclose_events(self) -> None:
        events, self._events = self._events, None
        if events is not None and hasattr(events, "aclose"):
            try:
                await events.aclose()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - the engine's cleanup must not hide the answer
                log.exception("closing the engine stream failed")

    def close(self) -> None:
        """Stop generating, give back the slot and the adapter lease, write the audit row.

        Idempotent: the stream's `finally` and the response's background task both call it.
        """
        if self._release():
            self._record()

    def _release(self) -> bool:
        """Stop generating, give back the slot and the adapter lease; False if done before."""
        if self._closed:
            return False
        self._closed = True
        self.request.cancel.set()
        if self.running is not None:
            self.ctx.streams.unregister(self.running)
        if self.lease is not None and self.ctx.adapters is not None:
            self.ctx.adapters.release(self.lease)
        if self._slot_held:
            self.ctx.limits.release_stream(self.caller.user_id)
        return True

    def _record(self) -> None:
        """The audit row and the answer's metrics (thread-safe: the audit chain has a lock)."""
        try:
            self._audit()
        except Exception:  # noqa: BLE001 - a failed audit write is logged, never silent
            log.exception("could not audit an API call")
        finish = self.finish
        metrics.record_answer(
            surface="api",
            status=self.status,
            completion_tokens=finish.completion_tokens if finish else len(self.parts),
            first_token_seconds=None
            if self.first_token_at is None
            else self.first_token_at - self.started,
            error=self.error,
            log_text=self.ctx.settings.log_prompts,
            prompt=self.prompt_record,
            answer="".join(self.parts),
        )

    @property
    def status(self) -> str:
        if self.error:
            return "error"
        if self.finish is None or self.finish.reason == "cancelled":
            return "stopped"
        return "complete"

    def audit_start(self) -> None:
        """The call's first audit row, before generation starts: a crash cannot lose it."""
        with self.ctx.session_factory() as session:
            audit.record_event(
                session=session,
                action=API_CALL_STARTED,
                actor_id=self.caller.user_id,
                details={
                    "call_id": self.call_id,
                    "endpoint": self.endpoint,
                    "key_id": self.caller.key_id,
                    "ip": self.caller.ip,
                    "model": self.model,
                    "served_model": self.ctx.engine.info.model,
                    "stream": self.stream,
                    "sampling": dataclasses.asdict(self.request.sampling),
                    "prompt": self.prompt_record,
                },
            )

    def _audit(self) -> None:
        version = self.lease.version if self.lease is not None else None
        finish = self.finish
        with self.ctx.session_factory() as session:
            audit.record_event(
                session=session,
                action=audit.API_CALL,
                actor_id=self.caller.user_id,
                details={
                    "call_id": self.call_id,
                    "endpoint": self.endpoint,
                    "key_id": self.caller.key_id,
                    "ip": self.caller.ip,
                    "model": self.model,
                    "served_model": self.ctx.engine.info.model,
                    "adapter_name": version.name if version else None,
                    "adapter_version": version.version if version else None,
                    "adapter_sha256": version.sha256 if version else None,
                    "stream": self.stream,
                    "sampling": dataclasses.asdict(self.request.sampling),
                    "prompt": self.prompt_record,
                    "prompt_tokens": finish.prompt_tokens if finish else None,
                    "completion_tokens": finish.completion_tokens if finish else len(self.parts),
                    "first_token_ms": (
                        None
                        if self.first_token_at is None
                        else round((self.first_token_at - self.started) * 1000)
                    ),
                    "total_ms": round((time.monotonic() - self.started) * 1000),
                    "status": self.status,
                    "error": self.error,
                    "text": "".join(self.parts),
                },
            )


def _audit_refusal(ctx: ApiContext, caller: Caller, endpoint: str, reason: str) -> None:
    with ctx.session_factory() as session:
        audit.record_event(
            session=session,
            action=audit.RATE_LIMITED,
            actor_id=caller.user_id,
            details={
                "endpoint": endpoint,
                "key_id": caller.key_id,
                "ip": caller.ip,
                "reason": reason,
            },
        )


async def open_call(
    *,
    ctx: ApiContext,
    caller: Caller,
    endpoint: str,
    model: str,
    sampling: SamplingParams,
    stream: bool,
    messages: Sequence[ChatMessage] = (),
    prompt: str | None = None,
) -> ApiCall:
    """Check the model and the user's limits, take a slot and the adapter, start generating.

    Raises:
        OpenAIError: 404 unknown model, 429 over the user's limits (with Retry-After),
            503 engine busy (with Retry-After), 400 the engine refused the request.
    """
    choice = resolve_model(model, ctx.engine, ctx.adapters)
    try:
        ctx.limits.check_message(caller.user_id)
        ctx.limits.acquire_stream(caller.user_id)
    except LimitExceeded as exc:
        _audit_refusal(ctx, caller, endpoint, str(exc.detail))
        raise OpenAIError(
            429,
            str(exc.detail),
            type="rate_limit_exceeded",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    request = GenerationRequest(messages=list(messages), prompt=prompt, sampling=sampling)
    prompt_record: Any = (
        prompt if prompt is not None else [{"role": m.role, "content": m.content} for m in messages]
    )
    call = ApiCall(ctx, caller, endpoint, model, request, prompt_record, stream, _slot_held=True)
    call.running = ctx.streams.register(Running(caller.user_id, request.cancel))
    try:
        # Before anything is generated (on a worker thread: the write must not stall streams).
        await asyncio.shield(asyncio.to_thread(call.audit_start))
        if ctx.adapters is not None:
            call.lease = await ctx.adapters.acquire(choice)
            request.adapter = call.lease.engine_name
        call._events = ctx.engine.generate(request)
        await call.start()
        first = call._first
        if isinstance(first, FinishEvent) and first.reason == "error":
            if is_out_of_memory(first.error):
                # Nothing was sent yet: the caller gets a retryable 503, the server keeps on.
                call.finish, call.error = first, first.error
                await call.aclose_events()
                call.close()
                raise OpenAIError(
                    503,
                    OUT_OF_MEMORY_MESSAGE,
                    type="server_error",
                    code="out_of_memory",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
    except EngineBusy as exc:
        call.error = str(exc)
        await call.aclose_events()
        call.close()
        raise OpenAIError(
            503,
            "The model is busy; retry shortly.",
            type="server_error",
            code="engine_overloaded",
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    except AdapterError as exc:
        call.error = str(exc)
        call.close()
        raise OpenAIError(404, str(exc), param="model", code="model_not_found") from None
    except UpstreamError as exc:
        call.error = str(exc)
        await call.aclose_events()
        call.close()
        raise OpenAIError(502, str(exc), type="server_error", code="upstream_error") from None
    except EngineError as exc:
        call.error = str(exc)
        await call.aclose_events()
        call.close()
        raise OpenAIError(500, str(exc), type="server_error") from None
    except BaseException:
        await call.aclose_events()
        call.close()
        raise
    return call


def chat_messages(raw: Sequence[tuple[str, str]]) -> list[ChatMessage]:
    """OpenAI roles as the engine knows them (`developer` is a system message)."""
    return [ChatMessage("system" if role == "developer" else role, text) for role, text in raw]
