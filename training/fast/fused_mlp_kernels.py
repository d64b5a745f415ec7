"""The elementwise middle of a LoRA-adapted Falcon MLP, forward and backward, in one pass each.

Between the up projection's GEMMs and the down projection's, the plain QLoRA recipe (PEFT over
bitsandbytes under bf16 autocast) runs a dozen elementwise kernels over (tokens x 4·hidden)
tensors: the 4-bit output cast to fp32 and cloned, the LoRA update scaled and added, GELU in
fp32, the down projection's input cast back to bf16, its LoRA dropout in fp32 and cast again;
backward runs as many. On Falcon-7B that is a third of a training step's memory traffic.

`up_activation_forward` / `up_activation_backward` compute the same values with one read of
their inputs and one write of their outputs. The arithmetic is the recipe's, rounding for
rounding (module docstring of training/fast/fused_mlp.py lists it); `act_dtype` is the dtype the
recipe's activations have: fp32 (norm outputs in fp32, the default) or the compute dtype
(`bf16_activations`), which rounds h, the gradient sums and GELU's gradient to it as autograd
would. Dropout masks come from Triton's Philox (torch's stream on CPU): another draw than
PEFT's `nn.Dropout`, the same distribution. Where the Triton kernels run, and the torch path
both MLPs share: training/fast/elementwise.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from training.fast.elementwise import (
    BLOCK,
    activation_grad,
    adapted,
    seeded_dropout,
    tl,
    triton,
    triton_runs,
)


def up_activation_forward(
    base: torch.Tensor,
    update: torch.Tensor,
    scale: float,
    p: float,
    seed: int,
    act_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(g, dropped, keep): the MLP activation and the down projection's LoRA input.

    h = base + (update·scale) in `act_dtype`, g = GELU(h) rounded to base's dtype (the 4-bit
    down projection's input), dropped = dropout(GELU(h)) with probability `p` (the LoRA
    branch's input; `act_dtype` here, base's dtype from the kernel, which runs only when that
    is also the LoRA dtype; g itself when p == 0), keep the uint8 mask (None when p == 0).

    Args:
        base: up projection's 4-bit output, compute dtype (bf16/fp16).
        update: its LoRA update before scaling, (x A.T) B.T, compute dtype.
        scale: LoRA alpha / r.
        p: the down projection's LoRA dropout probability (0 in eval).
        seed: Philox seed for the mask (drawn by the caller from torch's generator).
        act_dtype: fp32, or base's dtype for bf16 activations.
    """
    if triton_runs(base) and _kernel_dtypes_ok(base, update, act_dtype):
        return _forward_triton(base, update, scale, p, seed, act_dtype)
    return seeded_dropout(F.gelu(adapted(base, update, scale, act_dtype)), base.dtype, p, seed)


def up_activation_backward(
    grad_g: torch.Tensor,
    grad_dropped: torch.Tensor,
    keep: torch.Tensor | None,
    base: torch.Tensor,
    update: torch.Tensor,
    scale: float,
    p: float,
    act_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_base, grad_update): gradients of `up_activation_forward`'s h inputs.

    Args:
        grad_g: gradient at g from the down projection's 4-bit backward (compute dtype).
        grad_dropped: gradient at the dropped input from the LoRA A backward (compute dtype).
        keep, base, update, scale, p, act_dtype: as in and from the forward.

    Returns:
        grad_base = GELU'(h)·(grad_g + dropout'(grad_dropped)) in base's dtype (the 4-bit up
        projection's output gradient) and grad_update = that times `scale`, in update's dtype.
    """
    if triton_runs(base) and _kernel_dtypes_ok(base, update, act_dtype):
        return _backward_triton(grad_g, grad_dropped, keep, base, update, scale, p, act_dtype)
    h = adapted(base, update, scale, act_dtype)
    total = activation_grad(grad_g, grad_dropped, keep, p, act_dtype)
    grad_h = torch.ops.aten.gelu_backward(total, h).to(base.dtype)
    return grad_h, (grad_h.to(update.dtype) * scale)


def _kernel_dtypes_ok(base: torch.Tensor, update: torch.Tensor, act_dtype: torch.dtype) -> bool:
    half = (torch.bfloat16, torch.float16)
    return (
        base.dtype in half
        and update.dtype == base.dtype
        and act_dtype in (torch.float32, base.dtype)
        and base.is_contiguous()
        and update.is_contiguous()
        and base.numel() < 2**31
    )


def _forward_triton(base, update, scale, p, seed, act_dtype):
    n = base.numel()
    g = torch.empty_like(base)
    dropped = torch.empty_like(base) if p > 0 else g
    keep = torch.empty(base.shape, dtype=torch.uint8, device=base.device) if p > 0 else None
    _up_forward_kernel[(triton.cdiv(n, BLOCK),)](
        base, update, g, dropped, keep if keep is not None else g, n, float(scale), float(p),
        1.0 / (1.0 - p) if p > 0 else 1.0, seed,
        DROPOUT=p > 0, ROUND_ACT=act_dtype != torch.float32, BLOCK=BLOCK, num_warps=8,
    )  # fmt: skip
    return g, dropped, keep


def _backward_triton(grad_g, grad_dropped, keep, base, update, scale, p, act_dtype):
    n = base.numel()
    grad_base = torch.empty_like(base)
    grad_update = torch.empty_like(update)
    _up_backward_kernel[(triton.cdiv(n, BLOCK),)](
        grad_g.contiguous(), grad_dropped.contiguous(), keep if keep is not None else base,
        base, update, grad_base, grad_update, n, float(scale),
        1.0 / (1.0 - p) if keep is not None else 1.0,
        DROPOUT=keep is not None, ROUND_ACT=act_dtype != torch.float32, BLOCK=BLOCK, num_warps=8,
    )  # fmt: skip
    return grad_base, grad_update


if triton is not None:

    @triton.jit
    def _block_h(base_ptr, update_ptr, n, scale, ROUND_ACT: tl.constexpr, BLOCK: tl.constexpr):
        """This program's offsets, mask, base values and h = base + bf16(update·scale) in fp32
        (rounded to the compute dtype first in bf16 activations)."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        base = tl.load(base_ptr + offs, mask=mask, other=0.0)
        update = tl.load(update_ptr + offs, mask=mask, other=0.0)
        scaled = (update.to(tl.float32) * scale).to(base.dtype).to(tl.float32)
        h = base.to(tl.float32) + scaled
        if ROUND_ACT:
            h = h.to(base.dtype).to(tl.float32)
        return offs, mask, base, h

    @triton.jit
    def _up_forward_kernel(
        base_ptr, update_ptr, g_ptr, dropped_ptr, keep_ptr, n, scale, p, inv_keep, seed,
        DROPOUT: tl.constexpr, ROUND_ACT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        offs, mask, base, h = _block_h(base_ptr, update_ptr, n, scale, ROUND_ACT, BLOCK)
        dtype = base.dtype
        gelu = h * 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476))  # torch's order
        if ROUND_ACT:
            gelu = gelu.to(dtype).to(tl.float32)
        tl.store(g_ptr + offs, gelu.to(dtype), mask=mask)
        if DROPOUT:
            keep = tl.rand(seed, offs.to(tl.int32)) >= p
            tl.store(keep_ptr + offs, keep.to(tl.uint8), mask=mask)
            dropped = gelu * keep.to(tl.float32) * inv_keep
            tl.store(dropped_ptr + offs, dropped.to(dtype), mask=mask)

    @triton.jit
    def _up_backward_kernel(
        grad_g_ptr, grad_dropped_ptr, keep_ptr, base_ptr, update_ptr, grad_base_ptr,
        grad_update_ptr, n, scale, inv_keep,
        DROPOUT: tl.constexpr, ROUND_ACT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        offs, mask, base, h = _block_h(base_ptr, update_ptr, n, scale, ROUND_ACT, BLOCK)
        dtype = base.dtype
        from_lora = tl.load(grad_dropped_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if DROPOUT:
            keep = tl.load(keep_ptr + offs, mask=mask, other=0).to(tl.float32)
            from_lora = from_lora * keep * inv_keep
            if ROUND_ACT:
                from_lora = from_lora.to(dtype).to(tl.float32)
        total = tl.load(grad_g_ptr + offs, mask=mask, other=0.0).to(tl.float32) + from_lora
        if ROUND_ACT:
            total = total.to(dtype).to(tl.float32)
        cdf = 0.5 * (1.0 + tl.math.erf(h * 0.7071067811865476))
        pdf = tl.exp(-0.5 * h * h) * 0.3989422804014327  # 1/sqrt(2 pi), torch's kBeta
        grad_h = (total * (cdf + h * pdf)).to(dtype)
        tl.store(grad_base_ptr + offs, grad_h, mask=mask)
        tl.store(grad_update_ptr + offs, (grad_h.to(tl.float32) * scale).to(dtype), mask=mask)
