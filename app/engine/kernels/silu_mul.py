"""Llama's MLP activation `silu(gate) * up` in one Triton launch, for decode steps on CUDA.

torch runs it as two kernels (SiLU, then the product), and on a joined gate/up output
(`MmaRouting.join`), where gate and up are strided views, as two non-vectorized ones: 3.5 us
each a Llama-3.1-8B layer at 32 streams on an H100 (bench/results/
profile-serve-llama-shrink-h100.txt). Here one program per row and block of features reads
both halves and writes the product. The arithmetic is torch's: SiLU in fp32 rounded to the
dtype, then the product in fp32 rounded once more. Off until a card has measured it
(`ENABLED`; `bench/serve_gpu.py --variants mma+silu`); elsewhere (CPU, other dtypes, no
Triton) torch's two ops serve.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels import pdl
from app.engine.kernels.availability import triton_available

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


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`F.silu(gate) * up` for (..., F) tensors whose last dim has unit stride (views of a
    joined output are fine): one launch where `ENABLED` on CUDA in bf16, else torch's."""
    if gate.shape != up.shape:
        raise ValueError(f"gate {tuple(gate.shape)} and up {tuple(up.shape)} must match")
    if not _kernel_runs(gate, up):
        return F.silu(gate) * up
    return _launch(gate, up)


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


if triton is not None:

    @triton.jit
    def _silu_mul(
        g_ptr, u_ptr, out_ptr, width, g_stride, u_stride, BLOCK: tl.constexpr, PDL: tl.constexpr
    ):
        pdl.start(PDL)
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = cols < width
        g = tl.load(g_ptr + row * g_stride + cols, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + row * u_stride + cols, mask=ok, other=0.0)
        silu = (g / (1.0 + tl.exp(-g))).to(u.dtype)  # torch's SiLU, rounded to the dtype
        out = silu.to(tl.float32) * u.to(tl.float32)
        tl.store(out_ptr + row * width + cols, out.to(out_ptr.dtype.element_ty), mask=ok)
