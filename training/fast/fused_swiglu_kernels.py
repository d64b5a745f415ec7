"""The elementwise middle of a LoRA-adapted SwiGLU MLP (Llama, Mistral, Qwen2), one pass each way.

Between the gate/up projections' GEMMs and the down projection's, the plain QLoRA recipe (PEFT
over bitsandbytes under bf16 autocast) runs over (tokens x intermediate) tensors: both 4-bit
outputs cast to fp32 and cloned, both LoRA updates scaled and added, SiLU, the product, the
down projection's input cast back to bf16, its LoRA dropout in fp32 and cast again; backward
as many again. `swiglu_forward` / `swiglu_backward` compute the same values with one read of
their inputs and one write of their outputs.

The arithmetic is the recipe's, rounding for rounding: hg = base_g + bf16(update_g·s_g) and
hu likewise, in `act_dtype` (fp32 with fp32 norm outputs; the compute dtype with
`bf16_activations`, which rounds every intermediate as autograd would), a = SiLU(hg)·hu; the
4-bit down projection gets a in the compute dtype, its LoRA branch dropout(a). Backward: the
gradient at a is the sum of both branches' (fp32), then mul's and SiLU's backward as autograd
computes them (grad·hu, grad·SiLU(hg), `silu_backward`). Dropout masks come from Triton's
Philox (torch's generator on CPU): another draw than PEFT's `nn.Dropout`, same distribution.
Where the Triton kernels run, and the torch path both MLPs share: training/fast/elementwise.py.
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


def swiglu_forward(
    gate: tuple[torch.Tensor, torch.Tensor, float],
    up: tuple[torch.Tensor, torch.Tensor, float],
    p: float,
    seed: int,
    act_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(a_c, dropped, keep): the down projection's 4-bit input and its LoRA input.

    Args:
        gate, up: (base, update, scale) of each projection: its 4-bit output and its LoRA
            update before scaling, both in the compute dtype, and alpha / r.
        p: the down projection's LoRA dropout probability (0 in eval).
        seed: Philox seed for the mask (drawn by the caller from torch's generator).
        act_dtype: fp32, or the compute dtype for bf16 activations.

    Returns:
        a_c = SiLU(hg)·hu in the compute dtype; dropped = dropout(SiLU(hg)·hu) in `act_dtype`
        (the compute dtype from the kernel; a_c itself when p == 0); keep the uint8 mask
        (None when p == 0).
    """
    base_g, update_g, scale_g = gate
    base_u, update_u, scale_u = up
    if triton_runs(base_g) and _kernel_ok(act_dtype, base_g, update_g, base_u, update_u):
        return _forward_triton(gate, up, p, seed, act_dtype)
    hg = adapted(base_g, update_g, scale_g, act_dtype)
    a = F.silu(hg) * adapted(base_u, update_u, scale_u, act_dtype)
    return seeded_dropout(a, base_g.dtype, p, seed)


def swiglu_backward(
    grad_a: torch.Tensor,
    grad_dropped: torch.Tensor,
    keep: torch.Tensor | None,
    gate: tuple[torch.Tensor, torch.Tensor, float],
    up: tuple[torch.Tensor, torch.Tensor, float],
    p: float,
    act_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_base_g, grad_update_g, grad_base_u, grad_update_u) of `swiglu_forward`'s inputs.

    Args:
        grad_a: gradient at a_c from the down projection's 4-bit backward (compute dtype).
        grad_dropped: gradient at the dropped input from the LoRA A backward (compute dtype).
        keep, gate, up, p, act_dtype: as in and from the forward.

    Returns:
        Each projection's output gradient in its base's dtype, and that times its scale in
        its update's dtype (the gradient of the scaled LoRA update).
    """
    base_g, update_g, scale_g = gate
    base_u, update_u, scale_u = up
    if triton_runs(base_g) and _kernel_ok(act_dtype, base_g, update_g, base_u, update_u):
        return _backward_triton(grad_a, grad_dropped, keep, gate, up, p, act_dtype)
    hg = adapted(base_g, update_g, scale_g, act_dtype)
    hu = adapted(base_u, update_u, scale_u, act_dtype)
    total = activation_grad(grad_a, grad_dropped, keep, p, act_dtype)
    grad_g = torch.ops.aten.silu_backward(total * hu, hg).to(base_g.dtype)
    grad_u = (total * F.silu(hg)).to(base_u.dtype)
    return (
        grad_g,
        grad_g.to(update_g.dtype) * scale_g,
        grad_u,
        grad_u.to(update_u.dtype) * scale_u,
    )


def _kernel_ok(act_dtype: torch.dtype, *tensors: torch.Tensor) -> bool:
    half = (torch.bfloat16, torch.float16)
    dtype = tensors[0].dtype
    return (
        dtype in half
        and all(t.dtype == dtype and t.is_contiguous() for t in tensors)
        and act_dtype in (torch.float32, dtype)
        and tensors[0].numel() < 2**31
    )


def _forward_triton(gate, up, p, seed, act_dtype):
    base_g, update_g, scale_g = gate
    base_u, update_u, scale_u = up
    n = base_g.numel()
    a_c = torch.empty_like(base_g)
    dropped = torch.empty_like(base_g) if p > 0 else a_c
    keep = torch.empty(base_g.shape, dtype=torch.uint8, device=base_g.device) if p > 0 else None
    _swiglu_forward_kernel[(triton.cdiv(n, BLOCK),)](
        base_g, update_g, base_u, update_u, a_c, dropped, keep if keep is not None else a_c,
        n, float(scale_g), float(scale_u), float(p), 1.0 / (1.0 - p) if p > 0 else 1.0, seed,
        DROPOUT=p > 0, ROUND_ACT=act_dtype != torch.float32, BLOCK=BLOCK, num_warps=8,
    )  # fmt: skip
    return a_c, dropped, keep


def _backward_triton(grad_a, grad_dropped, keep, gate, up, p, act_dtype):
    base_g, update_g, scale_g = gate
    base_u, update_u, scale_u = up
    n = base_g.numel()
    outs = [torch.empty_like(t) for t in (base_g, update_g, base_u, update_u)]
    _swiglu_backward_kernel[(triton.cdiv(n, BLOCK),)](
        grad_a.contiguous(), grad_dropped.contiguous(), keep if keep is not None else base_g,
        base_g, update_g, base_u, update_u, *outs, n, float(scale_g), float(scale_u),
        1.0 / (1.0 - p) if keep is not None else 1.0,
        DROPOUT=keep is not None, ROUND_ACT=act_dtype != torch.float32, BLOCK=BLOCK, num_warps=8,
    )  # fmt: skip
    return tuple(outs)


if triton is not None:

    @triton.jit
    def _load_h(base_ptr, update_ptr, offs, mask, scale, ROUND_ACT: tl.constexpr):
        """h = base + bf16(update·scale) in fp32 (rounded to the compute dtype first in bf16
        activations), and the compute dtype's zero for stores."""
        base = tl.load(base_ptr + offs, mask=mask, other=0.0)
        update = tl.load(update_ptr + offs, mask=mask, other=0.0)
        scaled = (update.to(tl.float32) * scale).to(base.dtype).to(tl.float32)
        h = base.to(tl.float32) + scaled
        if ROUND_ACT:
            h = h.to(base.dtype).to(tl.float32)
        return h, base

    @triton.jit
    def _silu(h, dtype, ROUND_ACT: tl.constexpr):
        s = h / (1.0 + tl.exp(-h))  # torch's x / (1 + exp(-x))
        if ROUND_ACT:
            s = s.to(dtype).to(tl.float32)
        return s

    @triton.jit
    def _swiglu_forward_kernel(
        base_g_ptr, update_g_ptr, base_u_ptr, update_u_ptr, a_ptr, dropped_ptr, keep_ptr,
        n, scale_g, scale_u, p, inv_keep, seed,
        DROPOUT: tl.constexpr, ROUND_ACT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        hg, base = _load_h(base_g_ptr, update_g_ptr, offs, mask, scale_g, ROUND_ACT)
        hu, _ = _load_h(base_u_ptr, update_u_ptr, offs, mask, scale_u, ROUND_ACT)
        dtype = base.dtype
        a = _silu(hg, dtype, ROUND_ACT) * hu
        if ROUND_ACT:
            a = a.to(dtype).to(tl.float32)
        tl.store(a_ptr + offs, a.to(dtype), mask=mask)
        if DROPOUT:
            keep = tl.rand(seed, offs.to(tl.int32)) >= p
            tl.store(keep_ptr + offs, keep.to(tl.uint8), mask=mask)
            dropped = a * keep.to(tl.float32) * inv_keep
            tl.store(dropped_ptr + offs, dropped.to(dtype), mask=mask)

    @triton.jit
    def _swiglu_backward_kernel(
        grad_a_ptr, grad_dropped_ptr, keep_ptr, base_g_ptr, update_g_ptr, base_u_ptr,
        update_u_ptr, grad_base_g_ptr, grad_update_g_ptr, grad_base_u_ptr, grad_update_u_ptr,
        n, scale_g, scale_u, inv_keep,
        DROPOUT: tl.constexpr, ROUND_ACT: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        hg, base = _load_h(base_g_ptr, update_g_ptr, offs, mask, scale_g, ROUND_ACT)
        hu, _ = _load_h(base_u_ptr, update_u_ptr, offs, mask, scale_u, ROUND_ACT)
        dtype = base.dtype
        from_lora = tl.load(grad_dropped_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if DROPOUT:
            keep = tl.load(keep_ptr + offs, mask=mask, other=0).to(tl.float32)
            from_lora = from_lora * keep * inv_keep
            if ROUND_ACT:
                from_lora = from_lora.to(dtype).to(tl.float32)
        total = tl.load(grad_a_ptr + offs, mask=mask, other=0.0).to(tl.float32) + from_lora
        if ROUND_ACT:
            total = total.to(dtype).to(tl.float32)
        sig = 1.0 / (1.0 + tl.exp(-hg))
        s = hg * sig
        grad_s = total * hu
        if ROUND_ACT:
            s = s.to(dtype).to(tl.float32)
            grad_s = grad_s.to(dtype).to(tl.float32)
        # torch's silu_backward: grad · sigmoid(x) · (1 + x · (1 - sigmoid(x)))
        grad_g = (grad_s * sig * (1.0 + hg * (1.0 - sig))).to(dtype)
        grad_u = (total * s).to(dtype)
        tl.store(grad_base_g_ptr + offs, grad_g, mask=mask)
        tl.store(grad_update_g_ptr + offs, (grad_g.to(tl.float32) * scale_g).to(dtype), mask=mask)
        tl.store(grad_base_u_ptr + offs, grad_u, mask=mask)
        tl.store(grad_update_u_ptr + offs, (grad_u.to(tl.float32) * scale_u).to(dtype), mask=mask)
