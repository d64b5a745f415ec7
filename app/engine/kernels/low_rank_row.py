"""A LoRA factor's low-rank activations `x A.T` for ONE row, in one Triton launch.

Batch-1 decode with an adapter computes three of these per Falcon layer (the shared one for
`query_key_value` and `dense_h_to_4h`, then `dense` and `dense_4h_to_h`): R = 64-128 outputs
over 4,544-18,176 inputs. cuBLAS answers that shape with a split-K GEMV and a second kernel
to reduce the splits, 0.57 ms of a 4.2 ms step on an H200 (bench/results/
profile-serve-hybrid.txt). Here one program per output reads its row of A (contiguous, 9-36
KB) and the shared x in wide blocks, sums in fp32 and rounds once: one launch, no reduction
pass. The result differs from cuBLAS's only in the order of the fp32 sums. Elsewhere (CPU,
several rows) `F.linear` serves, so CPU answers stay bit-equal to PEFT's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels import pdl

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: F.linear serves
    triton = None

BLOCK_K = 8192
"""Inputs each program loads per iteration: one pass for 4,544, three for 18,176."""


def low_rank_row(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """`F.linear(x, a)` for x (..., in) and A (R, in); one Triton launch when x is a single
    row on CUDA and A's rows are contiguous."""
    one_row = x.numel() == x.shape[-1]
    if triton is None or not x.is_cuda or not one_row or a.stride(-1) != 1:
        return F.linear(x, a)
    return _launch(x, a)


def _launch(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The kernel on any device Triton runs on (CUDA, or CPU under TRITON_INTERPRET=1)."""
    rank, width = a.shape
    out = torch.empty(*x.shape[:-1], rank, dtype=x.dtype, device=x.device)
    block = min(BLOCK_K, triton.next_power_of_2(width))
    _low_rank_row[(rank,)](
        x.contiguous(), a, out, width, a.stride(0),
        BLOCK=block, ITERS=triton.cdiv(width, block), num_warps=max(1, block // 1024),
        **pdl.triton_options(x.device, 1),
    )  # fmt: skip
    return out


if triton is not None:

    @triton.jit
    def _low_rank_row(
        x_ptr, a_ptr, out_ptr, width, a_stride,
        BLOCK: tl.constexpr, ITERS: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        pdl.launch_dependents(PDL)
        offs = tl.arange(0, BLOCK)
        mask = offs < width
        # A's first block is constant: with PDL it loads while the kernel before finishes.
        a = tl.load(a_ptr + row * a_stride + offs, mask=mask, other=0.0).to(tl.float32)
        pdl.wait(PDL)
        acc = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) * a
        for it in tl.static_range(1, ITERS):  # unrolled: every block's loads can be in flight
            k = it * BLOCK + offs
            mask = k < width
            x = tl.load(x_ptr + k, mask=mask, other=0.0).to(tl.float32)
            a = tl.load(a_ptr + row * a_stride + k, mask=mask, other=0.0).to(tl.float32)
            acc += x * a
        tl.store(out_ptr + row, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty))
