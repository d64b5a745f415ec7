"""Layer norm of ONE row, and RMSNorm of any rows, in short Triton programs, for decode on CUDA.

torch's layer-norm kernel gives a row to one thread block that walks it in a loop; for a
single 4544-wide row that took 8.9 us on an H200, 33 times per Falcon-7B token (0.3 ms of a
5 ms step; bench/results/profile-serve-hybrid.txt). Here one program of 16 warps holds the
whole row in registers: one load, two reductions, one store. Same arithmetic as torch (fp32
mean and biased variance, `(x - mean) * rsqrt(var + eps) * weight + bias`, one rounding to the
input's dtype). Elsewhere (CPU, several rows) torch's `F.layer_norm` runs.

`rms_norm_rows` is the same for Llama's RMSNorm, which transformers computes in seven launches
(to fp32, square, mean, add, rsqrt, multiply, back to the dtype, times the weight): 65 norms
per Llama-8B token. It takes any number of rows, one program each: at 32 streams torch's
seven launches cost 1.2 ms of a 14 ms Llama-3.1-8B step on an H100 (a 9 us mean reduction
alone; bench/results/profile-serve-llama-mma-h100.txt). The kernel rounds where
transformers' `LlamaRMSNorm` does: the normalised row to the input dtype, then its product
with the weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels import pdl

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: torch's layer norm serves
    triton = None

MAX_WIDTH = 16384


def layer_norm_row(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """`F.layer_norm(x, (C,), weight, bias, eps)`, one Triton launch when x is a single row
    on CUDA (any leading dims of product 1, width up to `MAX_WIDTH`)."""
    width = x.shape[-1]
    one_row = x.numel() == width and width <= MAX_WIDTH
    if triton is None or not x.is_cuda or not one_row or bias is None:
        return F.layer_norm(x, (width,), weight, bias, eps)
    return _launch(x, weight, bias, eps)


def rms_norm_rows(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' `LlamaRMSNorm` over the last dim: one Triton launch (a program per row)
    for rows of at most `MAX_WIDTH` values on CUDA, else torch's ops in transformers' order."""
    width = x.shape[-1]
    if not x.is_cuda:  # the same ops in one call (upcast, mean of squares, rsqrt, cast back)
        return weight * F.rms_norm(x, (width,), eps=eps)
    if triton is None or width > MAX_WIDTH or x.numel() == 0:
        wide = x.float()
        variance = wide.pow(2).mean(-1, keepdim=True)
        return weight * (wide * torch.rsqrt(variance + eps)).to(x.dtype)
    return _launch_rms(x, weight, eps)


def _launch_rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The RMSNorm kernel on any device Triton runs on (CUDA, or CPU under TRITON_INTERPRET)."""
    width = x.shape[-1]
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    block = triton.next_power_of_2(width)
    warps = max(1, min(16, block // 256))
    rows = x.numel() // width
    _rms_norm_row[(rows,)](
        x.contiguous(), weight, out, width, eps,
        BLOCK=block, num_warps=warps, **pdl.triton_options(x.device, rows),
    )  # fmt: skip
    return out


def _launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """The kernel on any device Triton runs on (CUDA, or CPU under TRITON_INTERPRET=1)."""
    width = x.shape[-1]
    out = torch.empty_like(x)
    block = triton.next_power_of_2(width)
    warps = max(1, min(16, block // 256))
    row = x.contiguous()
    _layer_norm_row[(1,)](
        row, weight, bias, out, width, eps,
        BLOCK=block, num_warps=warps, **pdl.triton_options(x.device, 1),
    )  # fmt: skip
    return out


if triton is not None:

    @triton.jit
    def _layer_norm_row(
        x_ptr, w_ptr, b_ptr, out_ptr, width, eps, BLOCK: tl.constexpr, PDL: tl.constexpr
    ):
        pdl.launch_dependents(PDL)
        offs = tl.arange(0, BLOCK)
        mask = offs < width
        weight = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # constant: before
        bias = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # the wait
        pdl.wait(PDL)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / width
        centred = tl.where(mask, x - mean, 0.0)
        var = tl.sum(centred * centred, axis=0) / width
        y = centred * tl.rsqrt(var + eps) * weight + bias
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _rms_norm_row(x_ptr, w_ptr, out_ptr, width, eps, BLOCK: tl.constexpr, PDL: tl.constexpr):
        pdl.launch_dependents(PDL)
        offs = tl.arange(0, BLOCK)
        mask = offs < width
        weight = tl.load(w_ptr + offs, mask=mask, other=0.0)  # constant: before the wait
        pdl.wait(PDL)
        start = tl.program_id(0).to(tl.int64) * width  # this program's row
        x = tl.load(x_ptr + start + offs, mask=mask, other=0.0)
        wide = x.to(tl.float32)
        variance = tl.sum(wide * wide, axis=0) / width
        normed = (wide * tl.rsqrt(variance + eps)).to(x.dtype)  # transformers' first rounding
        y = weight.to(tl.float32) * normed.to(tl.float32)
        tl.store(out_ptr + start + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
