"""The sequential scheduler: one worker thread runs one request at a time on the model.

Web code awaits an async stream of events; the worker thread does the tensor work and hands
events back to the event loop with `call_soon_threadsafe`. Adapter loads and unloads run on
the same thread, between requests, so they never race a forward pass. The intake (prompt
preparation off the worker, the waiting-request counter, the queue) is the `Worker` both
schedulers share.

Each answer runs through `run_generation`: on CPU, Llama-family models take the lean forward
(`models/llama_cpu.py`); anything else the transformers path.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, cast

import torch

from app.contract import PromptFormat
from app.engine.generation import PreparedRequest, Stepper, run_generation
from app.engine.loader import LoadedModel
from app.engine.models.llama_cpu import FastLlama, FastStepper, unsupported_reason
from app.engine.schedulers.worker import STOP, Control, Job, ServedModel, Worker
from app.engine.types import (
    EngineInfo,
    Event,
    FinishEvent,
    GenerationRequest,
    OutOfMemory,
    SamplingParams,
)

log = logging.getLogger(__name__)


class SequentialEngine:
    """transformers + peft in this process, on CPU or one GPU, one answer at a time."""

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
        self.served = ServedModel(
            loaded, max_context_tokens=max_context_tokens, base_prompt_format=base_prompt_format
        )
        self._fast_path = fast_path
        self._fast_dtype = fast_dtype
        """Compute dtype of the lean CPU path (None: the model's own, bit-identical to it)."""
        self._fast: FastLlama | None = None
        self._fast_off: str | None = None
        """Built lazily on the worker thread; dropped whenever the adapter set changes."""
        self._worker = Worker(self.served, max_queue=max_queue)
        self._worker.start(self._work)

    @property
    def info(self) -> EngineInfo:
        return self.served.info

    @property
    def model(self) -> Any:
        return self.served.model

    @property
    def tokenizer(self) -> Any:
        return self.served.tokenizer

    @property
    def queue_depth(self) -> int:
        """Requests accepted but not yet generating (being prepared or waiting for the model)."""
        return self._worker.queue_depth

    @property
    def active_streams(self) -> int:
        return self._worker.active_streams

    # ---- requests -------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> Any:
        """Queue a request now and return its event stream (an async iterator of events).

        Raises:
            EngineBusy: the queue is full (the caller answers 503 with Retry-After).
            EngineError: the request names an adapter that is not loaded.
        """
        self.served.check_adapter(request.adapter)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:
                # The caller's event loop is gone: nobody is listening any more.
                request.cancel.set()

        self._worker.submit(Job(request, emit), retry_after=5)
        return self._worker.stream(events, request)

    def count_tokens(self, text: str) -> int:
        return self.served.count_tokens(text)

    def prompt_format(self, adapter: str | None) -> PromptFormat:
        return self.served.prompt_format(adapter)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """See `ServedModel.prepare`."""
        return self.served.prepare(request)

    # ---- adapters -------------------------------------------------------------------------

    async def load_adapter(self, name: str, path: Path, prompt_format: PromptFormat) -> None:
        """Attach a LoRA adapter under `name`; requests may use it once this returns."""

        def action() -> None:
            self.served.attach_adapter(name, path, prompt_format)
            self._fast, self._fast_off = None, None

        await self._worker.control(action)

    async def unload_adapter(self, name: str) -> None:
        """Detach an adapter and free its weights."""

        def action() -> None:
            self.served.detach_adapter(name)
            self._fast, self._fast_off = None, None

        await self._worker.control(action)

    # ---- worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._warm_up()
        except Exception:  # noqa: BLE001 - the transformers path still serves
            log.exception("fast path warm-up failed")
            self._fast_path = False
        while True:
            item = self._worker.take(block=True)
            if item is STOP:
                return
            if isinstance(item, Control):
                item.run()
                continue
            self._run_job(item)

    def _run_job(self, job: Job) -> None:
        self._worker.taken()
        refusal = job.refusal()
        if refusal is not None:
            job.emit(refusal)
            return
        prepared = cast(PreparedRequest, job.prepared)  # refusal() covers a missing prompt
        try:
            stepper = self._stepper(prepared)
            run_generation(self.model, self.tokenizer, prepared, job.emit, stepper)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            log.exception("out of memory during generation")
            job.emit(OutOfMemory.finish_event())
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
            self._fast = FastLlama(self.model, self.served.max_context, self._fast_dtype)
        total = len(prepared.prompt_ids) + prepared.sampling.max_new_tokens
        return FastStepper(self._fast, prepared.adapter, total)

    async def close(self) -> None:
        await self._worker.close()


def _has_forward_hooks(model: torch.nn.Module) -> bool:
    """Hooks on the model's forward (instrumentation, fault injection) need the module path."""
    return bool(model._forward_pre_hooks or model._forward_hooks)
