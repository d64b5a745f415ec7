"""Build the configured engine from settings (the only engine code that reads Settings)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Literal

import torch

from app.config import Settings
from app.engine.capabilities import cpu_has_native_bf16
from app.engine.fast_falcon import Linear
from app.engine.loader import LoadedModel, load_base_model
from app.engine.local import LocalEngine
from app.engine.types import Engine

log = logging.getLogger(__name__)

BF16_MIN_PARAMS = 50_000_000


def configure_cpu_threads(requested: int) -> None:
    """Use every core for one request's matmuls; on a small box oversubscription hurts most."""
    threads = requested or max(1, len(os.sched_getaffinity(0)))
    torch.set_num_threads(threads)


def build_engine(settings: Settings) -> Engine:
    """Load the base model (and a startup adapter) into a local engine.

    Raises:
        ModelLoadError: the model is missing or cannot be loaded as configured.
    """
    if settings.engine == "remote":
        return build_remote_engine(settings)
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
    if use_batch_scheduler(settings.scheduler, loaded):
        from app.engine.batch_engine import BatchEngine

        log.info("continuous batching, up to %d answers per step", settings.max_batch)
        return BatchEngine(
            loaded,
            max_batch=settings.max_batch,
            max_queue=settings.max_queue,
            max_context_tokens=settings.max_context_tokens,
            linear_override=nf4_override(loaded),
        )
    return LocalEngine(
        loaded,
        max_queue=settings.max_queue,
        max_context_tokens=settings.max_context_tokens,
        fast_dtype=cpu_fast_dtype(loaded, settings.dtype),
    )


def use_batch_scheduler(setting: str, loaded: LoadedModel) -> bool:
    """Whether this model runs on the batch scheduler.

    Raises:
        ModelLoadError: `batch` was asked for a model the batched path cannot run.
    """
    from app.engine.fast_falcon import unsupported_reason
    from app.engine.loader import ModelLoadError

    if setting == "sequential":
        return False
    reason = unsupported_reason(loaded.model)
    if setting == "batch" and reason is not None:
        raise ModelLoadError(f"TELLER_SCHEDULER=batch cannot run this model: {reason}")
    if reason is not None:
        log.info("batch scheduler off: %s", reason)
        return False
    return setting == "batch" or loaded.device.type == "cuda"


TRITON_MAX_ROWS = 64
"""Above this many rows (prefill) the matmul is compute-bound and cuBLAS wins."""

NF4Kernel = Literal["auto", "bnb", "bnb_flat", "triton", "hybrid"]


def nf4_override(
    loaded: LoadedModel, kernel: NF4Kernel = "auto"
) -> Callable[[torch.nn.Module], Linear | None] | None:
    """`FalconBatch`'s linear override: which NF4 kernel runs the 4-bit projections on CUDA.

    - `bnb`: bitsandbytes as loaded (None: no override);
    - `bnb_flat`: bitsandbytes with the double-quantized scales expanded once (`nf4_flat`);
    - `triton`: Teller's kernel (`nf4_matmul`), which reads the packed weights once for a
      whole batch of rows, where bitsandbytes dequantizes the full weight to bf16 first;
    - `hybrid`: `triton` for decode batches of 2..`TRITON_MAX_ROWS` rows; `bnb_flat` for one
      row (its GEMV is faster there) and for prompts (dequantize once, then a cuBLAS GEMM);
    - `auto`: `hybrid` where Triton runs, else `bnb_flat`.
    """
    if loaded.device.type != "cuda" or loaded.quantization != "nf4" or kernel == "bnb":
        return None
    from app.engine.nf4_flat import flat_nf4_linear

    triton = _triton_linear_factory(loaded)
    if kernel == "auto":
        kernel = "hybrid" if triton is not None else "bnb_flat"
    if kernel == "bnb_flat":
        return flat_nf4_linear
    if triton is None:
        raise ValueError(f"NF4 kernel {kernel!r} needs Triton on CUDA")
    if kernel == "triton":
        return triton

    def hybrid(module: torch.nn.Module) -> Linear | None:
        one_row, many_rows = flat_nf4_linear(module), triton(module)
        if one_row is None or many_rows is None:
            return one_row or many_rows

        def forward(x: torch.Tensor) -> torch.Tensor:
            # Row counts are fixed per captured graph, so this choice is made at capture.
            rows = x.numel() // x.shape[-1]
            return many_rows(x) if 1 < rows <= TRITON_MAX_ROWS else one_row(x)

        return forward

    return hybrid


LinearOverride = Callable[[torch.nn.Module], Linear | None]


def _triton_linear_factory(loaded: LoadedModel) -> LinearOverride | None:
    try:
        from app.engine.nf4_matmul import nf4_matmul, pack_linear4bit, triton_available
    except ImportError:
        return None
    if not triton_available(loaded.device):
        return None

    def override(module: torch.nn.Module) -> Linear | None:
        import bitsandbytes as bnb

        if not isinstance(module, bnb.nn.Linear4bit) or module.bias is not None:
            return None
        packed = pack_linear4bit(module)

        def forward(x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, packed.in_features)
            return nf4_matmul(flat, packed).view(*x.shape[:-1], packed.out_features)

        return forward

    return override


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
