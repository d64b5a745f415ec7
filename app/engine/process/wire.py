"""What crosses the socket between the server and its engine process, and how.

Messages are tuples pickled by `multiprocessing.connection` (both ends are this program, run
by the same interpreter; nothing from outside ever reaches this socket). Events and failures
are spelled out rather than pickled as objects: an exception pickles by its message alone, so
`EngineBusy(retry_after=2)` would come back with the message as its `retry_after`.

Server to engine: `("generate", id, request fields)`, `("cancel", id)`,
`("call", call id, method, args)`, `("close",)`.
Engine to server: `("events", [(id, event), ...], stats)` once per event-loop turn (and with
no events every `child.STATS_EVERY_S`, so the server's `/metrics` stays current while idle),
`("reply", call id, failure or None)`, and at start `("ready", info, tokenizer)` or
`("failed", why)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.engine.gpu_memory import GpuMemory
from app.engine.types import (
    EngineBusy,
    EngineError,
    Event,
    FinishEvent,
    GenerationRequest,
    OutOfMemory,
    PrefillCounts,
    TokenEvent,
    UpstreamError,
)

Failure = tuple[str, str, int]
"""(kind, message, retry_after) of an `EngineError`."""


@dataclass(frozen=True, slots=True)
class Stats:
    """The engine's counters, sent with every batch of events and every few seconds (the
    queue's depth is not among them: the server counts what it sent and has not heard of)."""

    prefills: PrefillCounts = PrefillCounts()
    gpus: tuple[GpuMemory, ...] = ()
    """What the GPU holds, read in the engine's process (at most once a second)."""


def request_fields(request: GenerationRequest) -> dict[str, Any]:
    """The request as keyword arguments for `GenerationRequest` (its cancel event stays here:
    a cancel crosses as its own message)."""
    return {
        "messages": list(request.messages),
        "prompt": request.prompt,
        "adapter": request.adapter,
        "sampling": request.sampling,
        "continue_final": request.continue_final,
        "constraint": request.constraint,
    }


def failure_fields(error: EngineError) -> Failure:
    """`error` as plain data (`failure_from` rebuilds it)."""
    if isinstance(error, EngineBusy):
        return ("busy", str(error), error.retry_after)
    if isinstance(error, OutOfMemory):
        return ("out_of_memory", str(error), 0)
    if isinstance(error, UpstreamError):
        return ("upstream", str(error), 0)
    return ("error", str(error), 0)


def failure_from(fields: Failure) -> EngineError:
    kind, message, retry_after = fields
    if kind == "busy":
        return EngineBusy(retry_after=retry_after)
    if kind == "out_of_memory":
        return OutOfMemory()
    if kind == "upstream":
        return UpstreamError(message)
    return EngineError(message)


def event_fields(event: Event) -> tuple[Any, ...]:
    """`event` as a tuple: a token event is (text, tokens), a finish event is longer."""
    if isinstance(event, TokenEvent):
        return (event.text, event.tokens)
    failure = failure_fields(event.failure) if event.failure is not None else None
    return (
        event.reason,
        event.text,
        event.prompt_tokens,
        event.completion_tokens,
        event.error,
        failure,
        event.stop,
    )


def event_from(fields: tuple[Any, ...]) -> Event:
    if len(fields) == 2:
        return TokenEvent(fields[0], tokens=fields[1])
    reason, text, prompt_tokens, completion_tokens, error, failure, stop = fields
    return FinishEvent(
        reason,
        text,
        prompt_tokens,
        completion_tokens,
        error=error,
        failure=failure_from(failure) if failure is not None else None,
        stop=stop,
    )
