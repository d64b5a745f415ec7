"""What both schedulers share, by composition: the served model and the worker thread's intake.

- `ServedModel`: the loaded model with its adapters and the prompt format each was trained
  on; turns a request into prompt ids (rendered, tokenised, trimmed to the context).
- `Worker`: one thread that owns the model. A request's prompt is prepared on a small
  preparation pool before it reaches the worker's queue, so one request with a huge history
  never holds up answers already running or waiting, and a cancel stops its preparation.
  Nothing the event loop calls here waits on the worker: the queue is unbounded and a counter
  of waiting requests is what answers busy. Control actions (adapter loads and unloads) go
  through the same queue, so they run between forward passes, never during one.

A scheduler owns one of each through its `SchedulerHost` (`host.py`), which starts the
worker's thread with the scheduler's warm-up and loop: the sequential one answers one request
at a time, the batch one steps many together.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.contract import PromptFormat, stop_strings_for
from app.engine.constraints import GrammarCompiler, GrammarError
from app.engine.generation import PreparedRequest
from app.engine.loader import LoadedModel
from app.engine.prompt_fit import (
    PreparationCancelled,
    fit_completion_prompt,
    fit_conversation,
    max_token_chars,
)
from app.engine.types import (
    EngineBusy,
    EngineError,
    EngineInfo,
    Event,
    FinishEvent,
    GenerationRequest,
    TokenEvent,
)

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"
"""PEFT's name for "no adapter" inside a mixed-adapter forward."""

PREPARATION_THREADS = 2
"""Prompts prepared at once: a second one is served while a long history is being trimmed."""


@dataclass
class Job:
    request: GenerationRequest
    emit: Callable[[Event], None]
    prepared: PreparedRequest | None = None
    failure: FinishEvent | None = None
    """Set instead of `prepared` when preparation failed or was cancelled."""

    def refusal(self) -> FinishEvent | None:
        """The event that ends this job before the model sees it (cancelled, failed), or None."""
        if self.request.cancel.is_set():
            return FinishEvent("cancelled", "", 0, 0)
        if self.prepared is None:
            return self.failure or FinishEvent("error", "", 0, 0, error="no prompt")
        return None

    def admitted(self) -> PreparedRequest | None:
        """The prepared request to run, or None once this job has ended with its refusal."""
        refusal = self.refusal()
        if refusal is not None:
            self.emit(refusal)
            return None
        return self.prepared


@dataclass
class Control:
    action: Callable[[], Any]
    done: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)

    def run(self) -> None:
        """On the worker thread: run the action, hand its result to the awaiting caller."""
        try:
            self.done.set_result(self.action())
        except Exception as exc:  # noqa: BLE001 - handed back to the awaiting caller
            self.done.set_exception(exc)


STOP = object()
"""Queued by `Worker.close`: the scheduler's loop ends when it takes this."""


class ServedModel:
    """The model a scheduler runs, the adapters attached to it and their prompt formats."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_context_tokens: int,
        base_prompt_format: PromptFormat | None = None,
    ) -> None:
        self.loaded = loaded
        self.model: Any = loaded.model
        self.tokenizer = loaded.tokenizer
        self.max_context = max_context_tokens
        self._base_format = base_prompt_format or (
            PromptFormat.CHAT_TEMPLATE
            if getattr(self.tokenizer, "chat_template", None)
            else PromptFormat.ALPACA
        )
        self.adapter_formats: dict[str, PromptFormat] = {}
        self._char_bound = max_token_chars(self.tokenizer)
        self.grammars = GrammarCompiler(self.tokenizer)

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            model=self.loaded.source,
            device=str(self.loaded.device),
            dtype=str(self.loaded.dtype).removeprefix("torch."),
            quantization=self.loaded.quantization,
            adapters=tuple(self.adapter_formats),
        )

    def check_adapter(self, adapter: str | None) -> None:
        """Raises:
        EngineError: `adapter` is named but not loaded.
        """
        if adapter and adapter not in self.adapter_formats:
            raise EngineError(f"adapter {adapter!r} is not loaded")

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_format(self, adapter: str | None) -> PromptFormat:
        return (
            self.adapter_formats.get(adapter, self._base_format) if adapter else self._base_format
        )

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Prompt text → token ids, trimming the oldest turns to fit the context budget.

        Raises:
            PreparationCancelled: the request was cancelled meanwhile.
        """
        fmt = self.prompt_format(request.adapter)
        budget = max(16, self.max_context - request.sampling.max_new_tokens)
        if request.prompt is not None:
            ids = fit_completion_prompt(self.tokenizer, request.prompt, budget, self._char_bound)
        else:
            ids = fit_conversation(
                self.tokenizer,
                request.messages,
                fmt,
                budget,
                char_bound=self._char_bound,
                cancelled=request.cancel.is_set,
                continue_final=request.continue_final,
            )
        kwargs: dict[str, Any] = {}
        if self.adapter_formats:
            kwargs["adapter_names"] = [request.adapter or BASE_ADAPTER]
        return PreparedRequest(
            prompt_ids=ids,
            sampling=request.sampling,
            stop=tuple(request.sampling.stop) + stop_strings_for(fmt),
            forward_kwargs=kwargs,
            is_cancelled=request.cancel.is_set,
            adapter=request.adapter,
            constraint=self._compiled(request),
        )

    def _compiled(self, request: GenerationRequest) -> Any:
        """The request's grammar as a token mask (None: unconstrained).

        Raises:
            EngineError: the grammar cannot be compiled for this tokenizer.
        """
        if request.constraint is None:
            return None
        try:
            return self.grammars.compile(request.constraint)
        except GrammarError as exc:
            raise EngineError(str(exc)) from None

    def attach_adapter(self, name: str, path: Path, prompt_format: PromptFormat) -> None:
        """On the worker thread: attach a LoRA adapter through PEFT under `name`."""
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(path), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
        self.model.eval()
        self.adapter_formats[name] = prompt_format

    def detach_adapter(self, name: str) -> None:
        """On the worker thread: detach an adapter and free its weights (absent: nothing)."""
        if name not in self.adapter_formats:
            return
        del self.adapter_formats[name]
        if self.adapter_formats:
            self.model.delete_adapter(name)
        else:
            self.model = self.model.unload()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class Worker:
    """The request intake and the one thread that runs a scheduler's loop over the model."""

    def __init__(self, served: ServedModel, *, max_queue: int) -> None:
        self._served = served
        self._max_waiting = max_queue
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._preparer = concurrent.futures.ThreadPoolExecutor(
            PREPARATION_THREADS, thread_name_prefix="teller-prepare"
        )
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.active_streams = 0

    def start(self, loop: Callable[[], None]) -> None:
        """Run the scheduler's `loop` on the worker thread (it returns once it takes STOP)."""
        self._thread = threading.Thread(target=loop, name="teller-engine", daemon=True)
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        """Requests accepted but not yet generating (being prepared or waiting for the model)."""
        return self._pending

    def submit(self, job: Job, *, retry_after: int) -> None:
        """Count the request as waiting and hand it to the preparation pool.

        Raises:
            EngineBusy: `max_queue` requests are already waiting.
        """
        with self._pending_lock:
            if self._pending >= self._max_waiting:
                raise EngineBusy(retry_after=retry_after)
            self._pending += 1
        self._preparer.submit(self._prepare_and_queue, job)

    def _prepare_and_queue(self, job: Job) -> None:
        """On the preparation pool: the prompt ids (or why there are none), then the queue."""
        try:
            job.prepared = self._served.prepare(job.request)
        except PreparationCancelled:
            job.failure = FinishEvent("cancelled", "", 0, 0)
        except Exception as exc:  # noqa: BLE001 - this request fails, others go on
            log.exception("prompt preparation failed")
            job.failure = FinishEvent("error", "", 0, 0, error=str(exc))
        self._queue.put_nowait(job)

    def take(self, *, block: bool, timeout: float | None = None) -> Any:
        """The next `Job`, `Control` or `STOP` from the queue; None when empty and not blocking,
        or when `timeout` seconds passed."""
        try:
            return self._queue.get(block=block, timeout=timeout)
        except queue.Empty:
            return None

    def taken(self) -> None:
        """A waiting request left the queue for the model (or ended there)."""
        with self._pending_lock:
            self._pending -= 1

    async def control(self, action: Callable[[], Any]) -> Any:
        """Run `action` on the worker between steps (the unbounded queue never blocks)."""
        control = Control(action)
        self._queue.put_nowait(control)
        return await asyncio.wrap_future(control.done)

    async def stream(
        self, events: asyncio.Queue[Event], request: GenerationRequest
    ) -> AsyncIterator[Event]:
        """A request's events as the caller reads them, until its FinishEvent.

        Token events already waiting when the caller reads come as one (`joined`): a reader
        that keeps up gets one event per token, one that fell behind (an event loop busy
        with many streams) catches up in one event instead of paying its per-event cost
        (an SSE chunk, a socket write) for every token.
        """
        self.active_streams += 1
        held: Event | None = None
        try:
            while True:
                event, held = await next_joined(events, held)
                yield event
                if isinstance(event, FinishEvent):
                    return
        finally:
            # The consumer stopped reading (finished, disconnected or cancelled): stop the loop.
            request.cancel.set()
            self.active_streams -= 1

    async def close(self) -> None:
        self._preparer.shutdown(wait=False)
        self._queue.put_nowait(STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)


async def next_joined(
    events: asyncio.Queue[Event], held: Event | None
) -> tuple[Event, Event | None]:
    """The next event for a reader (`held`, the one the last join stopped at, else the queue's
    next), joined with the token events already queued behind it; and the new `held`."""
    event = held if held is not None else await events.get()
    if type(event) is TokenEvent and not events.empty():
        return joined(event, events)
    return event, None


def joined(first: TokenEvent, events: asyncio.Queue[Event]) -> tuple[TokenEvent, Event | None]:
    """`first` and the token events queued behind it as one event (their texts in order),
    and the event that stopped the join (a FinishEvent), to be given next."""
    texts, tokens = [first.text], first.tokens
    while not events.empty():
        event = events.get_nowait()
        if type(event) is not TokenEvent:
            return TokenEvent("".join(texts), tokens=tokens), event
        texts.append(event.text)
        tokens += event.tokens
    return TokenEvent("".join(texts), tokens=tokens), None
