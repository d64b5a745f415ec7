"""Every part's masked LoRA update of a decode step added to its base output in ONE launch.

A step of several rows on several adapters adds LoRA through the stacked layout
(`LoraBank.add_masked`): `x A.T` over every loaded adapter (cuBLAS), `* mask` to keep each
row's own adapter (elementwise), then `+ low B.T` (addmm, cuBLAS) - three launches per
projection, 21 per Llama layer, ~670 small kernels in a Llama-3.1-8B step of 32 streams that
takes ~14 ms on an H100. Here the mask and the B product are one kernel that accumulates into
the base output in place, and the parts of a joined group (q/k/v, gate/up, Falcon's
query_key_value + dense_h_to_4h) share it, their low-rank activations from one GEMM over the
group's stacked A (`LoraBank.group_a`): two launches for a whole group, 8 per Llama layer
instead of 21.

The math is addmm's: the masked low-rank activations (bf16, exact for a 0/1 mask) times B in
fp32, plus the base output read as fp32, rounded once. The kernel allocates nothing and never
syncs with the host, so a CUDA graph captures it. Off CUDA (or without Triton, or where a part
boundary does not fall on a block) the torch reference does the same math; on CPU the callers
keep `add_masked`'s own path, which stays bit-equal to PEFT in float32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from app.engine.kernels.availability import triton_available

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: the torch reference serves
    triton = None

BLOCK_N = 64
"""Output columns per program. Every real part size (multiples of 128) is a multiple, so a
block lies in one part; 64 rather than 128 gives Llama-3.1-8B's q/k/v 96 programs per row
block, most of an H100's 132 SMs."""
WARPS = 4
"""Warps per program (a first choice; bench/lora_expand_gpu.py sweeps it with `BLOCK_N`)."""
MAX_PARTS = 4
"""Parts the kernel takes (its part boundaries are scalar arguments); more use the reference."""


def add_lora_expand(
    out: torch.Tensor,
    low: torch.Tensor,
    mask: torch.Tensor,
    b: torch.Tensor,
    starts: Sequence[int],
    *,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """`out[m, n] += Σ_k low[m, p(n)·SR + k] · mask[m, k] · b[n, k]`, in place.

    Args:
        out: (M, N) the base output of the group's parts side by side, updated in place
            (unit column stride).
        low: (M, P·SR) `x @ group_a.T`: part p's low-rank activations in columns p·SR onward.
        mask: (M, SR) the step's row mask (`LoraBank.row_mask`).
        b: (N, SR) the joined B·scale (unit column stride).
        starts: where each part begins along N, first 0 (e.g. (0, 4096, 5120) for q/k/v).
        base: read instead of `out` as the base output (same shape), so a caller whose base
            output is shared writes the sum to a fresh `out` without a copy first.

    Returns:
        `out`.

    Raises:
        ValueError: when the shapes do not fit together or `starts` is not 0 then strictly
            increasing below N.
    """
    base = out if base is None else base
    _check(out, low, mask, b, tuple(starts), base)
    if _kernel_fits(out, low, mask, b, tuple(starts), base) and triton_available(out.device):
        _launch(out, low, mask, b, tuple(starts), base)
    else:
        _reference(out, low, mask, b, tuple(starts), base)
    return out


def _check(
    out: torch.Tensor,
    low: torch.Tensor,
    mask: torch.Tensor,
    b: torch.Tensor,
    starts: tuple[int, ...],
    base: torch.Tensor,
) -> None:
    if out.dim() != 2 or low.dim() != 2 or mask.dim() != 2 or b.dim() != 2:
        raise ValueError(
            "add_lora_expand takes 2-D out (M, N), low (M, P*S*R), mask (M, S*R) and "
            f"b (N, S*R); got {tuple(out.shape)}, {tuple(low.shape)}, {tuple(mask.shape)}, "
            f"{tuple(b.shape)}"
        )
    rows, width = out.shape
    rank = mask.shape[1]
    parts = len(starts)
    if (
        not starts
        or starts[0] != 0
        or any(e <= s for s, e in zip(starts, starts[1:], strict=False))
    ):
        raise ValueError(f"starts must be 0 then strictly increasing; got {starts}")
    if starts[-1] >= width:
        raise ValueError(f"starts {starts} must lie below out's width {width}")
    wanted = {
        "low": (rows, parts * rank),
        "mask": (rows, rank),
        "b": (width, rank),
        "base": (rows, width),
    }
    for name, tensor in (("low", low), ("mask", mask), ("b", b), ("base", base)):
        if tuple(tensor.shape) != wanted[name]:
            raise ValueError(
                f"{name} must be {wanted[name]} for out {tuple(out.shape)}, {parts} part(s) "
                f"and mask width {rank}; got {tuple(tensor.shape)}"
            )


def _kernel_fits(
    out: torch.Tensor,
    low: torch.Tensor,
    mask: torch.Tensor,
    b: torch.Tensor,
    starts: tuple[int, ...],
    base: torch.Tensor,
) -> bool:
    """The kernel's layout: bf16 throughout, unit column strides, boundaries on blocks."""
    tensors = (out, low, mask, b, base)
    return (
        triton is not None
        and all(t.dtype == torch.bfloat16 for t in tensors)
        and all(t.stride(1) == 1 for t in tensors)
        and len(starts) <= MAX_PARTS
        and all(s % BLOCK_N == 0 for s in starts)
    )


def _reference(
    out: torch.Tensor,
    low: torch.Tensor,
    mask: torch.Tensor,
    b: torch.Tensor,
    starts: tuple[int, ...],
    base: torch.Tensor,
) -> None:
    """The kernel's math in torch: masked activations rounded to the compute dtype, then
    base + product in fp32, one rounding."""
    rank = mask.shape[1]
    ends = (*starts[1:], out.shape[1])
    for part, (start, end) in enumerate(zip(starts, ends, strict=True)):
        masked = (low[:, part * rank : (part + 1) * rank] * mask).float()  # (M, SR)
        total = base[:, start:end].float() + masked @ b[start:end].float().t()  # (M, n_p)
        out[:, start:end] = total.to(out.dtype)


def _launch(
    out: torch.Tensor,
    low: torch.Tensor,
    mask: torch.Tensor,
    b: torch.Tensor,
    starts: tuple[int, ...],
    base: torch.Tensor,
    *,
    block_n: int = BLOCK_N,
    warps: int = WARPS,
    block_k: int = 64,
) -> None:
    """The kernel on any device Triton runs on (CUDA, or CPU under TRITON_INTERPRET=1);
    `block_n` (a divisor of every part boundary), `warps` and `block_k` for benchmarks
    (bench/lora_expand_gpu.py)."""
    rows, width = out.shape
    rank = mask.shape[1]
    block_m = min(64, max(16, triton.next_power_of_2(rows)))
    block_k = min(block_k, max(16, triton.next_power_of_2(rank)))
    bounds = (*starts[1:], *(width,) * (MAX_PARTS - len(starts)))  # unused parts: never
    grid = (triton.cdiv(rows, block_m), triton.cdiv(width, block_n))
    _lora_expand[grid](
        out, base, low, mask, b, rows, width,
        out.stride(0), base.stride(0), low.stride(0), mask.stride(0), b.stride(0),
        *bounds, RANK=rank, FP32_DOT=_interpreting(),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
    )  # fmt: skip


def _interpreting() -> bool:
    """Under Triton's CPU interpreter (tests), whose `tl.dot` misreads bf16 operands."""
    return os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _lora_expand(
        out_ptr, base_ptr, low_ptr, mask_ptr, b_ptr, rows, width,
        out_stride, base_stride, low_stride, mask_stride, b_stride,
        start1, start2, start3,
        RANK: tl.constexpr, FP32_DOT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        col0 = tl.program_id(1) * BLOCK_N
        part = (
            (col0 >= start1).to(tl.int32)
            + (col0 >= start2).to(tl.int32)
            + (col0 >= start3).to(tl.int32)
        )
        m = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # (BM,)
        n = (col0 + tl.arange(0, BLOCK_N)).to(tl.int64)  # (BN,)
        m_ok, n_ok = m < rows, n < width
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in tl.static_range(0, RANK, BLOCK_K):  # S*R is fixed per adapter set
            k = k0 + tl.arange(0, BLOCK_K)  # (BK,)
            mk_ok = m_ok[:, None] & (k < RANK)[None, :]
            low = tl.load(
                low_ptr + m[:, None] * low_stride + (part * RANK + k)[None, :],
                mask=mk_ok, other=0.0,
            )  # fmt: skip
            keep = tl.load(mask_ptr + m[:, None] * mask_stride + k[None, :], mask=mk_ok, other=0.0)
            b = tl.load(
                b_ptr + n[None, :] * b_stride + k[:, None],
                mask=(k < RANK)[:, None] & n_ok[None, :], other=0.0,
            )  # (BK, BN)  # fmt: skip
            masked = (low.to(tl.float32) * keep.to(tl.float32)).to(b.dtype)  # as `low * mask`
            if FP32_DOT:  # the same bf16 values, multiplied where numpy can
                acc += tl.dot(masked.to(tl.float32), b.to(tl.float32), input_precision="ieee")
            else:
                acc += tl.dot(masked, b)
        mn_ok = m_ok[:, None] & n_ok[None, :]
        given = tl.load(base_ptr + m[:, None] * base_stride + n[None, :], mask=mn_ok, other=0.0)
        acc += given.to(tl.float32)
        tl.store(
            out_ptr + m[:, None] * out_stride + n[None, :],
            acc.to(out_ptr.dtype.element_ty), mask=mn_ok,
        )  # fmt: skip
