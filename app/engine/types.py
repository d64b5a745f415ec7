"""The engine's request and event types: plain data, no web or SQL types."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from app.contract import ChatMessage, PromptFormat
from app.engine.constraints import Grammar

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick tokens. `temperature == 0` means greedy."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class GenerationRequest:
    """One answer to produce. Give `messages` (chat) or `prompt` (raw completion)."""

    messages: Sequence[ChatMessage] = ()
    prompt: str | None = None
    adapter: str | None = None
    """Adapter name loaded in the engine, or None for the bare base model."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    cancel: threading.Event = field(default_factory=threading.Event)
    continue_final: bool = False
    """The last message is a partial assistant answer to continue (a calculator result was
    just written into it), not a finished turn: no new assistant turn is opened."""
    constraint: Grammar | None = None
    """Every token must keep the text inside this grammar (`app.engine.constraints`)."""


class EngineError(RuntimeError):
    """A generation could not run (bad request for this model, device failure)."""


class EngineBusy(EngineError):
    """The queue is full; the caller should retry after `retry_after` seconds."""

    def __init__(self, retry_after: int = 5) -> None:
        super().__init__("the model is busy; try again shortly")
        self.retry_after = retry_after


class UpstreamError(EngineError):
    """The remote engine's upstream could not be reached or answered with an error."""


class OutOfMemory(EngineError):
    """The device ran out of memory for this answer; other answers go on, and a retry once
    they end usually succeeds (the web layer answers 503, not 500)."""

    MESSAGE = "out of GPU memory"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)

    @classmethod
    def finish_event(cls) -> FinishEvent:
        """The event that ends an answer this failure stopped."""
        return FinishEvent("error", "", 0, 0, error=cls.MESSAGE, failure=cls())


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """New text; may cover several tokens when bytes of one character were held back, or when
    several were already waiting as the reader asked for the next event."""

    text: str
    tokens: int = field(default=1, kw_only=True)
    """Engine events joined in this one (1 as the engine emits it): what an answer that ends
    without a FinishEvent (its reader left) counts as generated."""


@dataclass(frozen=True, slots=True)
class FinishEvent:
    """The last event of every stream."""

    reason: FinishReason
    text: str
    prompt_tokens: int
    completion_tokens: int
    error: str = ""
    failure: EngineError | None = None
    """What kind of failure ended an errored answer (`OutOfMemory`, `UpstreamError`, ...),
    where the engine knows it; `error` is its text for people."""
    stop: str = ""
    """The stop string that ended the answer ("" for end-of-sequence or another reason)."""


Event = TokenEvent | FinishEvent


@dataclass(frozen=True, slots=True)
class EngineInfo:
    model: str
    device: str
    dtype: str
    quantization: str
    adapters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PrefillCounts:
    """Prompt forwards an engine ran since it started: `batches` forwards over `prompts`
    prompts (one each where prompts are not batched). Few prompts a batch in a burst of
    arrivals means each forward's fixed cost was paid again (`/metrics`, bench/serve_gpu.py).
    Replaced whole on each prefill, so a reader never sees one count moved without the other."""

    batches: int = 0
    prompts: int = 0

    def plus(self, batches: int, prompts: int) -> PrefillCounts:
        return PrefillCounts(self.batches + batches, self.prompts + prompts)


class Engine(Protocol):
    """Everything callers may use of an engine (local schedulers and the remote engine alike).

    Failures are typed: `generate` raises `EngineBusy` (retry later) or `EngineError` (an
    adapter that is not loaded; `UpstreamError` from a remote engine); a stream that fails
    mid-way ends with a `FinishEvent` whose `failure` says what kind (`OutOfMemory`, ...).
    """

    @property
    def info(self) -> EngineInfo: ...

    @property
    def queue_depth(self) -> int:
        """Requests accepted but not generating yet."""
        ...

    @property
    def active_streams(self) -> int:
        """Event streams a caller is reading now."""
        ...

    @property
    def prefills(self) -> PrefillCounts:
        """Prompt forwards run here since start (none for an engine whose upstream runs them)."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]: ...

    def count_tokens(self, text: str) -> int: ...

    async def load_adapter(self, name: str, path: Path, prompt_format: PromptFormat) -> None:
        """Make adapter `name` (a PEFT folder at `path`) usable by requests.

        Raises:
            EngineError: the engine cannot load it (`UpstreamError`: the upstream refused).
        """
        ...

    async def unload_adapter(self, name: str) -> None: ...

    async def close(self) -> None: ...
