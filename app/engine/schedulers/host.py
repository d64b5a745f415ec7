"""What each local scheduler needs around its own loop, written once and owned by composition.

`SchedulerHost` makes the served model and the worker thread together, runs the scheduler's
warm-up and then its loop on that thread (a failed warm-up is the scheduler's to judge: a
slower path, or every request failing with the reason), turns a request into an event stream,
runs adapter loads and unloads between steps, and shuts the thread down.

A scheduler brings only its warm-up, its loop and how its events reach the caller
(`delivery`): the sequential one answers one request at a time, the batch one steps many
together.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from app.contract import PromptFormat
from app.engine.generation import PreparedRequest
from app.engine.loader import LoadedModel
from app.engine.schedulers.delivery import Emitter, emit_each
from app.engine.schedulers.worker import Job, ServedModel, Worker
from app.engine.types import EngineInfo, Event, GenerationRequest


class SchedulerHost:
    """The served model, the worker thread and the request intake of one scheduler.

    Args:
        max_queue: requests waiting for the model before `open_stream` answers busy.
        max_context_tokens: prompt plus answer tokens one request may use.
        base_prompt_format: how prompts without an adapter are written (None: the
            tokenizer's chat template when it has one, else Alpaca).
        switch_interval_s: how long a thread may hold the interpreter lock while this host
            runs, at most (`sys.setswitchinterval`; restored by `close`; None: unchanged).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_queue: int,
        max_context_tokens: int,
        base_prompt_format: PromptFormat | None,
        switch_interval_s: float | None = None,
    ) -> None:
        self.served = ServedModel(
            loaded, max_context_tokens=max_context_tokens, base_prompt_format=base_prompt_format
        )
        self.worker = Worker(self.served, max_queue=max_queue)
        self.ready = threading.Event()
        """Set on the worker thread once the warm-up has run (or failed)."""
        self._switch_interval: float | None = None
        """The interval before this host shortened it (None: left alone)."""
        if switch_interval_s is not None:
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self._switch_interval, switch_interval_s))

    def start(
        self,
        loop: Callable[[], None],
        *,
        warm_up: Callable[[], None],
        on_warm_up_failure: Callable[[Exception], None],
    ) -> None:
        """Run `warm_up` and then `loop` (until it takes STOP) on the worker thread.

        `on_warm_up_failure` runs inside the handler (it may `log.exception`); the loop runs
        either way, so requests get an answer or the reason there is none.
        """

        def run() -> None:
            try:
                warm_up()
            except Exception as exc:  # noqa: BLE001 - the scheduler decides what it means
                on_warm_up_failure(exc)
            finally:
                self.ready.set()
            loop()

        self.worker.start(run)

    @property
    def info(self) -> EngineInfo:
        return self.served.info

    @property
    def model(self) -> Any:
        """The model as served now (a PEFT wrapper while adapters are attached)."""
        return self.served.model

    @property
    def queue_depth(self) -> int:
        """Requests accepted but not yet generating (being prepared or waiting for the model)."""
        return self.worker.queue_depth

    @property
    def active_streams(self) -> int:
        return self.worker.active_streams

    def count_tokens(self, text: str) -> int:
        return self.served.count_tokens(text)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """See `ServedModel.prepare`."""
        return self.served.prepare(request)

    def open_stream(
        self, request: GenerationRequest, *, retry_after: int, emitter: Emitter = emit_each
    ) -> AsyncIterator[Event]:
        """Queue a request now and return its event stream (an async iterator of events).

        Args:
            retry_after: seconds a busy answer tells the caller to wait.
            emitter: how the worker's events for this request reach the caller's loop.

        Raises:
            EngineBusy: the queue is full (the caller answers 503 with Retry-After).
            EngineError: the request names an adapter that is not loaded.
        """
        self.served.check_adapter(request.adapter)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        self.worker.submit(Job(request, emitter(loop, events, request)), retry_after=retry_after)
        return self.worker.stream(events, request)

    async def load_adapter(self, name: str, path: Path, prompt_format: PromptFormat) -> None:
        """Attach a LoRA adapter under `name` between steps; requests may use it once this
        returns (the scheduler's loop updates what it built from the model after each control)."""
        await self.worker.control(lambda: self.served.attach_adapter(name, path, prompt_format))

    async def unload_adapter(self, name: str) -> None:
        """Detach an adapter between steps and free its weights."""
        await self.worker.control(lambda: self.served.detach_adapter(name))

    async def close(self) -> None:
        """Stop the worker thread (it ends what runs and waits with an error event)."""
        await self.worker.close()
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
