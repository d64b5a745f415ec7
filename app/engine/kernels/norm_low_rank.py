"""A row's norm and LoRA's low-rank `h A.T` of it in ONE Triton launch, for batch-1 decode.

With an adapter, a Llama layer runs RMSNorm (`row_norm.rms_norm_rows`) and then the stacked
low-rank activations of the group that reads it (`low_rank_row.low_rank_row`: q/k/v, then
gate/up) before each joined GEMV; Falcon runs its layer norm and then the shared group's
(q/k/v beside dense_h_to_4h). Each is a launch of ~2 us on the critical path of a one-stream
token (bench/results/profile-serve-llama-mma-after-h100.txt). Here a program per row of A
recomputes the norm from x (a few KB, L2-resident after the first program reads it), program
0 stores h, and every program sums its row of `h A.T` from the rounded h: one launch instead
of two. Launched with programmatic dependent launch (`pdl`), a program loads its row of A and
the norm's weights before it waits for the kernel before.

h is bit-equal to the unfused kernels': the same loads, reductions (the same block and warp
count, so the same summation tree) and roundings. t is computed from h rounded to its dtype,
as the pair does, and differs from `low_rank_row` only in the order of its fp32 sums. Served
on CUDA (`ENABLED`; `bench/serve_gpu.py --variants mma,mma+nofold` compares); elsewhere (CPU,
several rows, no Triton) the unfused pair serves, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.engine.kernels import pdl
from app.engine.kernels.availability import triton_available
from app.engine.kernels.low_rank_row import low_rank_row
from app.engine.kernels.row_norm import MAX_WIDTH, layer_norm_row, rms_norm_rows

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: the unfused pair serves
    triton = None

ENABLED = True
"""Switch: True folds a one-row norm into its group's low-rank launch on CUDA. On since one H100
run served Llama-3.1-8B and Falcon-7B faster with it and the other fused launches
(serve-gpu-*-switches-h100.json; `--variants mma,mma+nofold` compares again)."""


def fold_runs(x: torch.Tensor, a: torch.Tensor) -> bool:
    """True when the folded launch serves `norm(x)` and its `h A.T`: `ENABLED`, one row of x
    on CUDA with Triton, at most `MAX_WIDTH` wide, and A (R, width) with contiguous rows."""
    width = x.shape[-1]
    return (
        ENABLED
        and triton is not None
        and x.numel() == width
        and 0 < width <= MAX_WIDTH
        and a.dim() == 2
        and a.shape[1] == width
        and a.stride(-1) == 1
        and triton_available(x.device)
        and a.device == x.device
    )


def rms_norm_low_rank(
    x: torch.Tensor, weight: torch.Tensor, eps: float, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, t): h = `rms_norm_rows(x, weight, eps)` and t = `low_rank_row(h, a)`, in one launch
    where `fold_runs`, else those two calls."""
    if not fold_runs(x, a):
        h = rms_norm_rows(x, weight, eps)
        return h, low_rank_row(h, a)
    return _launch(x, weight, None, eps, a, rms=True)


def layer_norm_low_rank(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, t): h = `layer_norm_row(x, weight, bias, eps)` and t = `low_rank_row(h, a)`, in one
    launch where `fold_runs` (and a bias is given, as the one-row layer norm kernel needs),
    else those two calls."""
    if bias is None or not fold_runs(x, a):
        h = layer_norm_row(x, weight, bias, eps)
        return h, low_rank_row(h, a)
    return _launch(x, weight, bias, eps, a, rms=False)


@dataclass(frozen=True, eq=False)
class RowNorm:
    """A block's norm as the folded launch needs it: RMSNorm (weight, eps; `bias` None and
    `rms` True) or layer norm (weight, bias, eps). Calling it runs the unfused norm."""

    weight: torch.Tensor
    eps: float
    bias: torch.Tensor | None = None
    rms: bool = True

    @classmethod
    def layer(cls, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> RowNorm:
        return cls(weight, eps, bias, rms=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms:
            return rms_norm_rows(x, self.weight, self.eps)
        return layer_norm_row(x, self.weight, self.bias, self.eps)

    def fold(self, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x), norm(x) A.T), one launch where `fold_runs`."""
        if self.rms:
            return rms_norm_low_rank(x, self.weight, self.eps, a)
        return layer_norm_low_rank(x, self.weight, self.bias, self.eps, a)


def _launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    a: torch.Tensor,
    *,
    rms: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel on any device Triton runs on (CUDA, or CPU under TRITON_INTERPRET=1). Block
    and warps are the unfused norms' (`row_norm`), so h's reductions run the same tree."""
    width, rank = x.shape[-1], a.shape[0]
    dtype = torch.promote_types(x.dtype, weight.dtype) if rms else x.dtype
    h = torch.empty(x.shape, dtype=dtype, device=x.device)
    t = torch.empty(*x.shape[:-1], rank, dtype=dtype, device=x.device)
    block = triton.next_power_of_2(width)
    warps = max(1, min(16, block // 256))
    _norm_low_rank[(rank,)](
        x.contiguous(), weight, weight if bias is None else bias, a, h, t,
        width, a.stride(0), eps,
        RMS=rms, BLOCK=block, num_warps=warps, **pdl.triton_options(x.device, 1),
    )  # fmt: skip
    return h, t


if triton is not None:

    @triton.jit
    def _norm_low_rank(
        x_ptr, w_ptr, b_ptr, a_ptr, h_ptr, t_ptr, width, a_stride, eps,
        RMS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        pdl.launch_dependents(PDL)
        offs = tl.arange(0, BLOCK)
        mask = offs < width
        # constants before the wait: this program's row of A and the norm's weights
        a = tl.load(a_ptr + row.to(tl.int64) * a_stride + offs, mask=mask, other=0.0)
        if RMS:
            weight = tl.load(w_ptr + offs, mask=mask, other=0.0)
        else:
            weight = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            bias = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        pdl.wait(PDL)
        if RMS:  # `row_norm._rms_norm_row`'s arithmetic, op for op
            x = tl.load(x_ptr + offs, mask=mask, other=0.0)
            wide = x.to(tl.float32)
            variance = tl.sum(wide * wide, axis=0) / width
            normed = (wide * tl.rsqrt(variance + eps)).to(x.dtype)  # transformers' rounding
            y = weight.to(tl.float32) * normed.to(tl.float32)
        else:  # `row_norm._layer_norm_row`'s
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            mean = tl.sum(x, axis=0) / width
            centred = tl.where(mask, x - mean, 0.0)
            var = tl.sum(centred * centred, axis=0) / width
            y = centred * tl.rsqrt(var + eps) * weight + bias
        h = y.to(h_ptr.dtype.element_ty)
        if row == 0:
            tl.store(h_ptr + offs, h, mask=mask)
        # t from the rounded h, as `low_rank_row(h, A)` reads it
        dot = tl.sum(h.to(tl.float32) * a.to(tl.float32), axis=0)
        tl.store(t_ptr + row, dot.to(t_ptr.dtype.element_ty))
