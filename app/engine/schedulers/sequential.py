"""The in-process engine: one worker thread owns the model and runs every request on it.

Web code awaits an async stream of events; the worker thread does the tensor work and hands
events back to the event loop with `call_soon_threadsafe`. Adapter loads and unloads run on
the same thread, between requests, so they never race a forward pass.

A request's prompt is prepared (rendered, tokenised, trimmed to the context) on a small
preparation pool before it reaches the worker's queue, so one request with a huge history
never holds up answers already running or waiting, and a cancel stops its preparation.
Nothing the event loop calls here waits on the worker: the queue is unbounded and a counter
of waiting requests is what answers busy.
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
from app.engine.generation import PreparedRequest, Stepper, run_generation
from app.engine.loader import LoadedModel
from app.engine.models.llama_cpu import FastLlama, FastStepper, unsupported_reason
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
    SamplingParams,
)

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"
"""PEFT's name for "no adapter" inside a mixed-adapter forward."""


PREPARATION_THREADS = 2
"""Prompts prepared at once: a second one is served while a long history is being trimmed."""


@dataclass
class _Job:
    request: GenerationRequest
    emit: Callable[[Event], None]
    prepared: PreparedRequest | None = None
    failure: FinishEvent | None = None
    """Set instead of `prepared` when preparation failed or was cancelled."""


@dataclass
class _Control:
    action: Callable[[], Any]
    done: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


_STOP = object()


class SequentialEngine:
    """transformers + peft in this process, on CPU or one GPU."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_queue: int = 64,
        max_context_tokens: int = 2048,
        base_prompt_format: PromptFormat | None = None,
        fast_path: bool = True,
        fast_dtype: torch.dtype | None = None,
    ) -> None:
        self._loaded = loaded
        self.model: Any = loaded.model
        self.tokenizer = loaded.tokenizer
        self._max_context = max_context_tokens
        self._base_format = base_prompt_format or (
            PromptFormat.CHAT_TEMPLATE
            if getattr(self.tokenizer, "chat_template", None)
            else PromptFormat.ALPACA
        )
        self._adapter_formats: dict[str, PromptFormat] = {}
        self._fast_path = fast_path
        self._fast_dtype = fast_dtype
        """Compute dtype of the lean CPU path (None: the model's own, bit-identical to it)."""
        self._fast: FastLlama | None = None
        self._fast_off: str | None = None
        """Built lazily on the worker thread; dropped whenever the adapter set changes."""
        self._char_bound = max_token_chars(self.tokenizer)
        self._max_waiting = max_queue
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._preparer = concurrent.futures.ThreadPoolExecutor(
            PREPARATION_THREADS, thread_name_prefix="teller-prepare"
        )
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="teller-engine", daemon=True)
        self._thread.start()
        self.active_streams = 0

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            model=self._loaded.source,
            device=str(self._loaded.device),
            dtype=str(self._loaded.dtype).removeprefix("torch."),
            quantization=self._loaded.quantization,
            adapters=tuple(self._adapter_formats),
        )

    @property
    def queue_depth(self) -> int:
        """Requests accepted but not yet generating (being prepared or waiting for the model)."""
        return self._pending

    # ---- requests -------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Queue a request now and return its event stream.

        Raises:
            EngineBusy: the queue is full (the caller answers 503 with Retry-After).
            EngineError: the request names an adapter that is not loaded.
        """
        if request.adapter and request.adapter not in self._adapter_formats:
            raise EngineError(f"adapter {request.adapter!r} is not loaded")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:
                # The caller's event loop is gone: nobody is listening any more.
                request.cancel.set()

        self._submit(_Job(request, emit), retry_after=5)
        return self._stream(events, request)

    def _submit(self, job: _Job, *, retry_after: int) -> None:
        """Count the request as waiting and hand it to the preparation pool.

        Raises:
            EngineBusy: `max_queue` requests are already waiting.
        """
        with self._pending_lock:
            if self._pending >= self._max_waiting:
                raise EngineBusy(retry_after=retry_after)
            self._pending += 1
        self._preparer.submit(self._prepare_and_queue, job)

    def _prepare_and_queue(self, job: _Job) -> None:
        """On the preparation pool: the prompt ids (or why there are none), then the queue."""
        try:
            job.prepared = self.prepare(job.request)
        except PreparationCancelled:
            job.failure = FinishEvent("cancelled", "", 0, 0)
        except Exception as exc:  # noqa: BLE001 - this request fails, others go on
            log.exception("prompt preparation failed")
            job.failure = FinishEvent("error", "", 0, 0, error=str(exc))
        self._queue.put_nowait(job)

    def _taken(self) -> None:
        """A waiting request left the queue for the model (or ended there)."""
        with self._pending_lock:
            self._pending -= 1

    async def _stream(
        self, events: asyncio.Queue[Event], request: GenerationRequest
    ) -> AsyncIterator[Event]:
        self.active_streams += 1
        try:
            while True:
                event = await events.get()
                yield event
                if isinstance(event, FinishEvent):
                    return
        finally:
            # The consumer stopped reading (finished, disconnected or cancelled): stop the loop.
            request.cancel.set()
            self.active_streams -= 1

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_format(self, adapter: str | None) -> PromptFormat:
        return (
            self._adapter_formats.get(adapter, self._base_format) if adapter else self._base_format
        )

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Prompt text → token ids, trimming the oldest turns to fit the context budget.

        Raises:
            PreparationCancelled: the request was cancelled meanwhile.
        """
        fmt = self.prompt_format(request.adapter)
        budget = max(16, self._max_context - request.sampling.max_new_tokens)
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
            )
        kwargs: dict[str, Any] = {}
        if self._adapter_formats:
            kwargs["adapter_names"] = [request.adapter or BASE_ADAPTER]
        return PreparedRequest(
            prompt_ids=ids,
            sampling=request.sampling,
            stop=tuple(request.sampling.stop) + stop_strings_for(fmt),
            forward_kwargs=kwargs,
            is_cancelled=request.cancel.is_set,
            adapter=request.adapter,
        )

    # ---- adapters -------------------------------------------------------------------------

    async def load_adapter(self, name: str, path: Path, prompt_format: PromptFormat) -> None:
        """Attach a LoRA adapter under `name`; requests may use it once this returns."""

        def action() -> None:
            from peft import PeftModel

            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            self.model.eval()
            self._adapter_formats[name] = prompt_format
            self._fast, self._fast_off = None, None

        await self._control(action)

    async def unload_adapter(self, name: str) -> None:
        """Detach an adapter and free its weights."""

        def action() -> None:
            if name not in self._adapter_formats:
                return
            del self._adapter_formats[name]
            if self._adapter_formats:
                self.model.delete_adapter(name)
            else:
                self.model = self.model.unload()
            self._fast, self._fast_off = None, None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

        await self._control(action)

    async def _control(self, action: Callable[[], Any]) -> Any:
        """Run `action` on the worker between requests (the unbounded queue never blocks)."""
        control = _Control(action)
        self._queue.put_nowait(control)
        return await asyncio.wrap_future(control.done)

    # ---- worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._warm_up()
        except Exception:  # noqa: BLE001 - the transformers path still serves
            log.exception("fast path warm-up failed")
            self._fast_path = False
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, _Control):
                try:
                    item.done.set_result(item.action())
                except Exception as exc:  # noqa: BLE001 - handed back to the awaiting caller
                    item.done.set_exception(exc)
                continue
            self._run_job(item)

    def _run_job(self, job: _Job) -> None:
        self._taken()
        if job.request.cancel.is_set():
            job.emit(FinishEvent("cancelled", "", 0, 0))
            return
        if job.prepared is None:
            job.emit(job.failure or FinishEvent("error", "", 0, 0, error="no prompt"))
            return
        prepared = job.prepared
        try:
            stepper = self._stepper(prepared)
            run_generation(self.model, self.tokenizer, prepared, job.emit, stepper)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            log.exception("out of memory during generation")
            job.emit(FinishEvent("error", "", 0, 0, error="out of GPU memory"))
        except Exception as exc:  # noqa: BLE001 - one request fails, the engine keeps serving
            log.exception("generation failed")
            job.emit(FinishEvent("error", "", 0, 0, error=str(exc)))

    def _warm_up(self) -> None:
        """Build the lean path (and let oneDNN pick its kernels) before the first user waits."""
        stepper = self._stepper(
            PreparedRequest([0] * 8, SamplingParams(max_new_tokens=2), (), {}, lambda: False)
        )
        if stepper is not None:
            stepper.prefill([0] * 8)
            stepper.decode(0)

    def _stepper(self, prepared: PreparedRequest) -> Stepper | None:
        """The lean CPU forward when this model qualifies, else None (the transformers path)."""
        if not self._fast_path or self._fast_off or _has_forward_hooks(self.model):
            return None
        if self._fast is None:
            self._fast_off = unsupported_reason(self.model)
            if self._fast_off is not None:
                log.info("fast decode path off: %s", self._fast_off)
                return None
            self._fast = FastLlama(self.model, self._max_context, self._fast_dtype)
        total = len(prepared.prompt_ids) + prepared.sampling.max_new_tokens
        return FastStepper(self._fast, prepared.adapter, total)

    async def close(self) -> None:
        self._preparer.shutdown(wait=False)
        self._queue.put_nowait(_STOP)
        await asyncio.to_thread(self._thread.join, 30)


def _has_forward_hooks(model: torch.nn.Module) -> bool:
    """Hooks on the model's forward (instrumentation, fault injection) need the module path."""
    return bool(model._forward_pre_hooks or model._forward_hooks)
