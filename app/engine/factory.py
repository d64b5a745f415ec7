"""Build the configured engine from settings (the only engine code that reads Settings)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch

from app.config import Settings
from app.engine.capabilities import cpu_has_native_bf16, cpu_int4_kernel_fast
from app.engine.kernels.nf4_routing import nf4_override
from app.engine.loader import LoadedModel, ModelLoadError, load_base_model
from app.engine.schedulers.sequential import SequentialEngine
from app.engine.types import Engine

if TYPE_CHECKING:
    from app.engine.kernels.cpu_int4_batch import Int4Projections
    from app.engine.schedulers.batch import BatchEngine

    LocalEngine = BatchEngine | SequentialEngine

log = logging.getLogger(__name__)

BF16_MIN_PARAMS = 50_000_000


def configure_cpu_threads(requested: int) -> None:
    """Use every core for one request's matmuls; on a small box oversubscription hurts most."""
    threads = requested or max(1, len(os.sched_getaffinity(0)))
    torch.set_num_threads(threads)


def build_engine(settings: Settings) -> Engine:
    """The configured engine: remote, local in a process of its own, or local in this one.

    Raises:
        ModelLoadError: the model is missing or cannot be loaded as configured.
    """
    if settings.engine == "remote":
        return build_remote_engine(settings)
    if engine_in_own_process(settings):
        from app.engine.process.proxy import EngineProcess

        log.info("the engine runs in a process of its own (TELLER_ENGINE_PROCESS)")
        return EngineProcess(settings)
    return build_local_engine(settings)


def engine_in_own_process(settings: Settings) -> bool:
    """`on`, or `auto` where the model will run on CUDA: there the engine's step loop is fast
    enough that sharing the interpreter lock with the web server delays it: `/v1`'s first
    token p50 232 ms apart against 300 beside the server, at the same throughput
    (bench/results/serve-gpu-llama-aiohttp-h100.json). On CPU the forward itself is the
    limit, and one process keeps memory and start-up lower."""
    if settings.engine_process != "auto":
        return settings.engine_process == "on"
    return settings.device != "cpu" and torch.cuda.is_available()


def build_local_engine(settings: Settings) -> LocalEngine:
    """Load the base model (and a startup adapter) into a local engine in this process.

    Raises:
        ModelLoadError: the model is missing or cannot be loaded as configured.
    """
    configure_cpu_threads(settings.cpu_threads)
    loaded = load_base_model(
        settings.resolved_base_model,
        device=settings.device,
        quantization=settings.quantization,
        dtype=settings.dtype,
        allow_download=settings.allow_hub_downloads,
    )
    log.info(
        "model %s on %s (%s, quantization %s)",
        loaded.source, loaded.device, loaded.dtype, loaded.quantization,
    )  # fmt: skip
    if use_batch_scheduler(settings.scheduler, loaded, settings.max_context_tokens):
        from app.engine.schedulers.batch import BatchEngine

        log.info("continuous batching, up to %d answers per step", settings.max_batch)
        override = nf4_override(loaded, settings.nf4_kernels)
        if loaded.device.type == "cpu":  # packed from the float32 weights, before any cast
            override = batch_int4_projections(loaded, settings.cpu_int4, settings.dtype)
        cast = cpu_fast_dtype(loaded, settings.dtype)
        if cast is not None:  # the batched forward computes in the model's own dtype
            loaded.model.to(cast)
            loaded.dtype = cast
        return BatchEngine(
            loaded,
            max_batch=settings.max_batch,
            max_queue=settings.max_queue,
            max_context_tokens=settings.max_context_tokens,
            linear_override=override,
        )
    return SequentialEngine(
        loaded,
        max_queue=settings.max_queue,
        max_context_tokens=settings.max_context_tokens,
        fast_dtype=cpu_lean_dtype(loaded, settings.dtype, settings.cpu_int4),
    )


def use_batch_scheduler(setting: str, loaded: LoadedModel, max_tokens: int | None = None) -> bool:
    """Whether this model runs on the batch scheduler (Falcon- and Llama-family models).

    `auto` picks it on CUDA only. On CPU `batch` answers several users at once (four at once:
    about 2-6x the tokens/s, first tokens within a second instead of after the answers ahead),
    but one user alone decodes about a fifth slower than on the sequential engine's lean
    forward (bench/results/cpu-schedulers.json, a shared 2-core box), so `auto` keeps that.

    Raises:
        ModelLoadError: `batch` was asked for a model the batched path cannot run.
    """
    from app.engine.loader import ModelLoadError
    from app.engine.models.families import unsupported_reason

    if setting == "sequential":
        return False
    reason = unsupported_reason(loaded.model, max_tokens)
    if setting == "batch" and reason is not None:
        raise ModelLoadError(f"TELLER_SCHEDULER=batch cannot run this model: {reason}")
    if reason is not None:
        log.info("batch scheduler off: %s", reason)
        return False
    return setting == "batch" or loaded.device.type == "cuda"


def cpu_fast_dtype(loaded: LoadedModel, setting: str) -> torch.dtype | None:
    """bf16 for the lean CPU path when the dtype was left on auto and it pays off.

    It pays off where reading the weights bounds each step (SmolLM2-135M: ~540 MB of float32
    per token) on a CPU with native bf16; a model under `BF16_MIN_PARAMS` is bound by per-op
    overhead instead, gains nothing and keeps exact float32 (tiny test models among them). An
    explicit `TELLER_DTYPE=float32` keeps decoding bit-identical to transformers' float32.
    """
    if setting != "auto" or loaded.device.type != "cpu" or loaded.dtype != torch.float32:
        return None
    if not cpu_has_native_bf16():
        return None
    params = sum(p.numel() for p in loaded.model.parameters())
    return torch.bfloat16 if params >= BF16_MIN_PARAMS else None


def cpu_lean_dtype(loaded: LoadedModel, dtype: str, int4: str) -> torch.dtype | None:
    """The lean CPU path's format: int4 weights (`INT4`) where `TELLER_CPU_INT4` asks for
    them and the model can take them, else `cpu_fast_dtype`'s choice.

    `auto` picks int4 only for a model that came from a 4-bit file (`four_bit_share`), with
    `TELLER_DTYPE=auto` and torch's vectorised int4 kernel on this CPU: then nothing changes
    but the bf16 rounding of each group's scale and zero, and a decode step reads a quarter
    of bf16's bytes (bench/results/cpu-llamacpp.json). `always` rounds any Llama-family model's
    projections to 4 bits first (lossy, as converting it to a Q4_1 file would be).

    Raises:
        ModelLoadError: `always` was asked for a model the lean CPU path cannot run.
    """
    from app.engine.models.llama_cpu import unsupported_reason
    from app.engine.models.llama_cpu_int4 import (
        INT4,
        four_bit_share,
        int4_reason,
        round_projections,
    )

    if int4 == "off" or loaded.device.type != "cpu":
        return cpu_fast_dtype(loaded, dtype)
    reason = unsupported_reason(loaded.model) or int4_reason(loaded.model)
    if int4 == "always":
        if reason is not None:
            raise ModelLoadError(f"TELLER_CPU_INT4=always cannot run this model: {reason}")
        round_projections(loaded.model)
        log.info("lean CPU path: projections rounded to int4 (TELLER_CPU_INT4=always)")
        return INT4
    if reason is None and dtype == "auto" and cpu_int4_kernel_fast():
        share = four_bit_share(loaded.model)
        if share > 0:
            log.info("lean CPU path: int4 weights (%.0f%% of projections are 4-bit)", share * 100)
            return INT4
    return cpu_fast_dtype(loaded, dtype)


def batch_int4_projections(loaded: LoadedModel, int4: str, dtype: str) -> Int4Projections | None:
    """Int4 projections for the batch scheduler on CPU (`Int4Projections`), or None.

    The same rule as the lean path (`cpu_lean_dtype`): `auto` packs a Llama-family model that
    came from a 4-bit file, with `TELLER_DTYPE=auto` and the vectorised int4 kernel; `always`
    rounds every projection to 4 bits (lossy). Several users at once then share a quarter of
    bf16's weight bytes per step (docs/cpu-serving.md has the figures).
    """
    from app.engine.kernels.cpu_int4_batch import DENSE_ROWS, Int4Projections
    from app.engine.models.families import family
    from app.engine.models.llama import LlamaBlocks
    from app.engine.models.llama_cpu_int4 import four_bit_share
    from app.engine.models.peft_layout import base_model
    from app.engine.models.projections import base_linear

    if int4 == "off" or family(loaded.model) != "llama":
        return None
    if int4 == "auto" and not (
        dtype == "auto" and cpu_int4_kernel_fast() and four_bit_share(loaded.model) > 0
    ):
        return None
    blocks = LlamaBlocks(loaded.model)
    layers = blocks.modules()
    modules = [base_linear(module) for layer in layers for module in layer.values()]
    groups = [[base_linear(layer[n]) for n in group] for layer in layers for group in blocks.groups]
    head = base_model(loaded.model).lm_head
    dense_rows = DENSE_ROWS if cpu_has_native_bf16() else None  # prompts as the lean path's
    projections = Int4Projections(
        modules, exact_only=int4 == "auto", head=head, groups=groups, dense_rows=dense_rows
    )
    if projections.share == 0:
        return None
    log.info("batch scheduler: int4 weights for %.0f%% of projections", projections.share * 100)
    return projections


def build_remote_engine(settings: Settings) -> Engine:
    """An engine that forwards generation to `TELLER_REMOTE_URL` (no model loads here).

    Raises:
        ModelLoadError: the settings are malformed or the upstream cannot be asked its model.
    """
    from app.engine.loader import ModelLoadError
    from app.engine.remote import RemoteEngine, UpstreamError, parse_model_map

    try:
        engine = RemoteEngine(
            settings.remote_url,
            api_key=settings.remote_api_key,
            model=settings.remote_model,
            model_map=parse_model_map(settings.remote_model_map),
            adapter_root=settings.remote_adapter_root,
            local_adapter_root=settings.models_dir / "adapters",
        )
    except (ValueError, UpstreamError) as exc:
        raise ModelLoadError(str(exc)) from None
    log.info("remote engine at %s serving %s", engine.url, engine.model)
    return engine
