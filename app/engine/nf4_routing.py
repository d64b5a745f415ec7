"""Which NF4 kernel runs each 4-bit projection of the batched Falcon forward, by row count.

A decode step's projections are memory-bound and the best kernel depends on how many rows
share one read of the weights: one row wants a GEMV that streams the packed bytes once
(`nf4_gemv`), 2-64 rows a kernel that multiplies all rows against each packed tile
(`nf4_matmul`), and a prompt is compute-bound, so bitsandbytes dequantizing once for a cuBLAS
GEMM wins there. Row counts are fixed per captured CUDA graph, so the choice costs nothing
per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from app.engine.fast_falcon import Linear
from app.engine.loader import LoadedModel

TRITON_MAX_ROWS = 64
"""Above this many rows (prefill) the matmul is compute-bound and cuBLAS wins."""

NF4Kernel = Literal["auto", "bnb", "bnb_flat", "triton", "hybrid"]
LinearOverride = Callable[[torch.nn.Module], Linear | None]


def nf4_override(loaded: LoadedModel, kernel: NF4Kernel = "auto") -> LinearOverride | None:
    """`FalconBatch`'s linear override: which NF4 kernel runs the 4-bit projections on CUDA.

    - `bnb`: bitsandbytes as loaded (None: no override);
    - `bnb_flat`: bitsandbytes with the double-quantized scales expanded once (`nf4_flat`);
    - `triton`: `nf4_matmul` for every row count;
    - `hybrid`: `nf4_gemv` for one row, `nf4_matmul` for 2..`TRITON_MAX_ROWS` rows, `bnb_flat`
      for prompts. Each kernel keeps its own repacked copy of the weights (about 2 x 3.6 GB
      more for Falcon-7B), the price of reading them at full speed at every batch size;
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
        prompt, one_row, many_rows = flat_nf4_linear(module), _gemv(module), triton(module)
        if prompt is None or one_row is None or many_rows is None:
            return prompt or many_rows

        def forward(x: torch.Tensor) -> torch.Tensor:
            rows = x.numel() // x.shape[-1]
            if rows == 1:
                return one_row(x)
            return many_rows(x) if rows <= TRITON_MAX_ROWS else prompt(x)

        return forward

    return hybrid


def _triton_linear_factory(loaded: LoadedModel) -> LinearOverride | None:
    try:
        from app.engine.nf4_matmul import nf4_matmul, pack_linear4bit, triton_available
    except ImportError:
        return None
    if not triton_available(loaded.device):
        return None

    def override(module: torch.nn.Module) -> Linear | None:
        if not _plain_linear4bit(module):
            return None
        packed = pack_linear4bit(module)

        def forward(x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, packed.in_features)
            return nf4_matmul(flat, packed).view(*x.shape[:-1], packed.out_features)

        return forward

    return override


def _gemv(module: torch.nn.Module) -> Linear | None:
    from app.engine.nf4_gemv import nf4_gemv, pack_gemv

    if not _plain_linear4bit(module):
        return None
    packed = pack_gemv(module)
    return lambda x: nf4_gemv(x, packed)


def _plain_linear4bit(module: torch.nn.Module) -> bool:
    import bitsandbytes as bnb

    return isinstance(module, bnb.nn.Linear4bit) and module.bias is None
