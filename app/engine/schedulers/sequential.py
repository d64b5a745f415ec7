"""The sequential scheduler: one worker thread runs one request at a time on the model.

Web code awaits an async stream of events; the worker thread does the tensor work and hands
each event back to the event loop as it comes (`delivery.emit_each`). Adapter loads and
unloads run on the same thread, between requests, so they never race a forward pass. The
served model, the worker thread's start-up and shutdown and the intake are the
`SchedulerHost` both schedulers own.

Each answer runs through `run_generation`: on CPU, Llama-family models take the lean forward
(`models/llama_cpu.py`); anything else the transformers path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from app.contract import PromptFormat
from app.engine.generation import PreparedRequest, Stepper, run_generation
from app.engine.loader import LoadedModel
from app.engine.models.llama_cpu import FastLlama, FastStepper, unsupported_reason
from app.engine.schedulers.host import SchedulerHost
from app.engine.schedulers.worker import STOP, Control, Job
from app.engine.types import (
    EngineInfo,
    FinishEvent,
    GenerationRequest,
    OutOfMemory,
    PrefillCounts,
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
        self.host = SchedulerHost(
            loaded,
            max_queue=max_queue,
            max_context_tokens=max_context_tokens,
            base_prompt_format=base_prompt_format,
        )
        self._fast_path = fast_path
        self._fast_dtype = fast_dtype
        """Compute dtype of the lean CPU path (None: the model's own, bit-identical to it)."""
        self._fast: FastLlama | None = None
        self._fast_off: str | None = None
        """Built lazily on the worker thread; dropped whenever the adapter set changes."""
        self._prefills = PrefillCounts()
        self.host.start(self._work, warm_up=self._warm_up, on_warm_up_failure=self._fast_failed)

    @property
    def info(self) -> EngineInfo:
        return self.host.info

    @property
    def model(self) -> Any:
        return self.host.model

    @property
    def queue_depth(self) -> int:
        """Requests accepted but not yet generating (being prepared or waiting for the model)."""
        return self.host.queue_depth

    @property
    def active_streams(self) -> int:
        return self.host.active_streams

    @property
    def prefills(self) -> PrefillCounts:
        return self._prefills

    def count_tokens(self, text: str) -> int:
        return self.host.count_tokens(text)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """See `ServedModel.prepare`."""
        return self.host.prepare(request)

    def generate(self, request: GenerationRequest) -> Any:
        """See `SchedulerHost.open_stream` (each event goes to the caller as it comes)."""
        return self.host.open_stream(request, retry_after=5)

    async def load_adapter(self, name: str, path: Path, prompt_format: PromptFormat) -> None:
        """Attach a LoRA adapter under `name`; requests may use it once this returns."""
        await self.host.load_adapter(name, path, prompt_format)

    async def unload_adapter(self, name: str) -> None:
        """Detach an adapter and free its weights."""
        await self.host.unload_adapter(name)

    async def close(self) -> None:
        await self.host.close()

    # ---- worker ---------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self.host.worker.take(block=True)
            if item is STOP:
                return
            if isinstance(item, Control):
                item.run()
                self._fast, self._fast_off = None, None  # the adapter set changed
                continue
            self._run_job(item)

    def _fast_failed(self, exc: Exception) -> None:
        """A failed warm-up turns the lean path off: the transformers path still serves."""
        log.exception("fast path warm-up failed")
        self._fast_path = False

    def _run_job(self, job: Job) -> None:
        self.host.worker.taken()
        prepared = job.admitted()
        if prepared is None:
            return
        self._prefills = self._prefills.plus(1, 1)  # one answer at a time, its prompt alone
        try:
            stepper = self._stepper(prepared)
            run_generation(self.model, self.host.served.tokenizer, prepared, job.emit, stepper)
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
            self._fast = FastLlama(self.model, self.host.served.max_context, self._fast_dtype)
        total = len(prepared.prompt_ids) + prepared.sampling.max_new_tokens
        return FastStepper(self._fast, prepared.adapter, total)


def _has_forward_hooks(model: torch.nn.Module) -> bool:
    """Hooks on the model's forward (instrumentation, fault injection) need the module path."""
    return bool(model._forward_pre_hooks or model._forward_hooks)
