"""The engine's request and event types: plain data, no web or SQL types."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from app.contract import ChatMessage

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


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """New text; may cover several tokens when bytes of one character were held back."""

    text: str


@dataclass(frozen=True, slots=True)
class FinishEvent:
    """The last event of every stream."""

    reason: FinishReason
    text: str
    prompt_tokens: int
    completion_tokens: int
    error: str = ""


Event = TokenEvent | FinishEvent


@dataclass(frozen=True, slots=True)
class EngineInfo:
    model: str
    device: str
    dtype: str
    quantization: str
    adapters: tuple[str, ...] = ()


class EngineError(RuntimeError):
    """A generation could not run (bad request for this model, device failure)."""


class EngineBusy(EngineError):
    """The queue is full; the caller should retry after `retry_after` seconds."""

    def __init__(self, retry_after: int = 5) -> None:
        super().__init__("the model is busy; try again shortly")
        self.retry_after = retry_after


class Engine(Protocol):
    """What the web layer may use: submit a request, read its events."""

    info: EngineInfo

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]: ...

    def count_tokens(self, text: str) -> int: ...

    async def close(self) -> None: ...
