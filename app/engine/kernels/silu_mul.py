"""Llama's MLP activation `silu(gate) * up` in one Triton launch, for decode steps on CUDA.

torch runs it as two kernels (SiLU, then the product), and on a joined gate/up output
(`MmaRouting.join`), where gate and up are strided views, as two non-vectorized ones: 3.5 us
each a Llama-3.1-8B layer at 32 streams on an H100 (bench/results/
profile-serve-llama-shrink-h100.txt). Here one program per row and block of features reads
both halves and writes the product. The arithmetic is torch's: SiLU in fp32 rounded to the
dtype, then the product in fp32 rounded once more. Served on CUDA (`ENABLED`; `bench/
serve_gpu.py --variants mma,mma+nosilu` compares); elsewhere (CPU, other dtypes, no Triton)
torch's two ops serve. `silu_mul_low_rank` also computes the down projection's LoRA
`h A.T` in the same launch, for one row (`FOLD`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels import pdl
from app.engine.kernels.availability import triton_available
from app.engine.kernels.low_rank_row import low_rank_row

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: torch serves
    triton = None

ENABLED = True
"""Switch: True sends CUDA bf16 activations through the kernel. On since one H100 run served
Llama-3.1-8B faster with it and the other fused launches (serve-gpu-llama-switches-h100.json;
`--variants mma,mma+nosilu` compares again)."""
BLOCK = 1024
"""Features each program handles."""
FOLD = False
"""Switch: True computes one row's h = silu(gate) * up and the down projection's LoRA
`h A.T` in one launch (`silu_mul_low_rank`) instead of two. Off: one H100 run served one
Llama-3.1-8B + LoRA stream 6 % slower with it (bench/results/serve-gpu-llama-occupy2-h100.json)."""
FOLD_MAX_WIDTH = 32768
"""The widest activation the folded launch takes (each program walks it in `BLOCK` steps)."""


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`F.silu(gate) * up` for (..., F) tensors whose last dim has unit stride (views of a
    joined output are fine): one launch where `ENABLED` on CUDA in bf16, else torch's."""
    if gate.shape != up.shape:
        raise ValueError(f"gate {tuple(gate.shape)} and up {tuple(up.shape)} must match")
    if not _kernel_runs(gate, up):
        return F.silu(gate) * up
    return _launch(gate, up)


def silu_mul_low_rank(
    gate: torch.Tensor, up: torch.Tensor, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, t): h = `silu_mul(gate, up)` and t = `low_rank_row(h, a)` for the down projection's
    LoRA A (R, F). One Triton launch where `fold_runs`: a program per row of A recomputes h
    from gate and up (L2-resident after the first program reads them), program 0 stores it,
    and each sums its row of t from the rounded h, as the pair does (t differs only in the
    order of its fp32 sums). Elsewhere the two calls, bit for bit."""
    if not fold_runs(gate, up, a):
        h = silu_mul(gate, up)
        return h, low_rank_row(h, a)
    return _launch_fold(gate, up, a)


def fold_runs(gate: torch.Tensor, up: torch.Tensor, a: torch.Tensor) -> bool:
    """True when `silu_mul_low_rank` is one launch: `FOLD`, the kernel's conditions, one row
    at most `FOLD_MAX_WIDTH` wide, and A (R, F) with contiguous rows on the same device."""
    width = gate.shape[-1]
    return (
        FOLD
        and gate.shape == up.shape
        and gate.numel() == width <= FOLD_MAX_WIDTH
        and a.dim() == 2
        and a.shape[1] == width
        and a.stride(-1) == 1
        and a.device == gate.device
        and _kernel_runs(gate, up)
    )


def _kernel_runs(gate: torch.Tensor, up: torch.Tensor) -> bool:
    return (
        ENABLED
        and triton is not None
        and gate.dtype == torch.bfloat16
        and up.dtype == torch.bfloat16
        and gate.stride(-1) == 1
        and up.stride(-1) == 1
        and triton_available(gate.device)
    )


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(rows, F) view with the row stride kept (a joined output's half); a copy if none."""
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        return t.reshape(-1, t.shape[-1])


def _launch(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The kernel on any device Triton runs on (CUDA, or CPU under TRITON_INTERPRET=1)."""
    g, u = _rows(gate), _rows(up)
    rows, width = g.shape
    out = torch.empty(rows, width, dtype=gate.dtype, device=gate.device)
    grid = (rows, triton.cdiv(width, BLOCK))
    _silu_mul[grid](
        g, u, out, width, g.stride(0), u.stride(0),
        BLOCK=BLOCK, num_warps=4, **pdl.triton_options(gate.device, rows),
    )  # fmt: skip
    return out.view(gate.shape)


def _launch_fold(
    gate: torch.Tensor, up: torch.Tensor, a: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded kernel on any device Triton runs on (CUDA, or CPU under TRITON_INTERPRET=1)."""
    g, u = _rows(gate), _rows(up)
    width, rank = g.shape[1], a.shape[0]
    h = torch.empty(1, width, dtype=gate.dtype, device=gate.device)
    t = torch.empty(1, rank, dtype=gate.dtype, device=gate.device)
    _silu_mul_low_rank[(rank,)](
        g, u, a, h, t, width, a.stride(0),
        BLOCK=BLOCK, ITERS=triton.cdiv(width, BLOCK), num_warps=4,
        **pdl.triton_options(gate.device, 1),
    )  # fmt: skip
    return h.view(gate.shape), t.view(*gate.shape[:-1], rank)


if triton is not None:

    @triton.jit
    def _product(g_ptr, u_ptr, cols, ok):
        """silu(gate) * up for the features `cols`: torch's SiLU in fp32 rounded to the dtype,
        then the product in fp32 (rounded by the caller's store)."""
        g = tl.load(g_ptr + cols, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + cols, mask=ok, other=0.0)
        silu = (g / (1.0 + tl.exp(-g))).to(u.dtype)
        return silu.to(tl.float32) * u.to(tl.float32)

    @triton.jit
    def _silu_mul(
        g_ptr, u_ptr, out_ptr, width, g_stride, u_stride, BLOCK: tl.constexpr, PDL: tl.constexpr
    ):
        pdl.start(PDL)
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = cols < width
        out = _product(g_ptr + row * g_stride, u_ptr + row * u_stride, cols, ok)
        tl.store(out_ptr + row * width + cols, out.to(out_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _silu_mul_low_rank(
        g_ptr, u_ptr, a_ptr, h_ptr, t_ptr, width, a_stride,
        BLOCK: tl.constexpr, ITERS: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        rank_row = tl.program_id(0)
        pdl.launch_dependents(PDL)
        a_row = a_ptr + rank_row.to(tl.int64) * a_stride
        offs = tl.arange(0, BLOCK)
        a = tl.load(a_row + offs, mask=offs < width, other=0.0)  # constant: before the wait
        pdl.wait(PDL)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for it in tl.static_range(ITERS):
            cols = it * BLOCK + offs
            ok = cols < width
            if it > 0:
                a = tl.load(a_row + cols, mask=ok, other=0.0)
            h = _product(g_ptr, u_ptr, cols, ok).to(h_ptr.dtype.element_ty)
            if rank_row == 0:
                tl.store(h_ptr + cols, h, mask=ok)
            acc += h.to(tl.float32) * a.to(tl.float32)  # t from the rounded h, as the pair
        tl.store(t_ptr + rank_row, tl.sum(acc, axis=0).to(t_ptr.dtype.element_ty))
