"""A LoRA-adapted 4-bit Falcon MLP as one autograd function, with the recipe's arithmetic.

PEFT over bitsandbytes computes `down(GELU(up(x)))` (each projection `base4bit(x) + B(A(
dropout(x)))·s`) through a dozen autograd nodes per projection, each a kernel over a
(tokens x 4·hidden) tensor: casts to and from fp32, a defensive clone of the 4-bit output,
the scaled update, GELU, the down projection's dropout in fp32, and as many in backward. On an
H200 those elementwise passes, not the GEMMs, were the largest cost of a Falcon-7B step after
attention was fixed. `FusedLoraMLP` runs the same GEMMs (bitsandbytes' own 4-bit matmul and its
backward, cuBLAS for LoRA) and does everything between them in one kernel each way
(training/fast/fused_mlp_kernels.py).

The values are the recipe's, rounding for rounding: with fp32 norm outputs (the default) h =
fp32(base) + fp32(bf16(update·s)) and GELU run in fp32, the down projection gets bf16(GELU(h)),
its LoRA branch bf16(dropout(GELU(h))), the MLP output is fp32(base) + fp32(bf16(update·s));
backward keeps fp32 where autograd does (the gradient sum at GELU's output, GELU's gradient)
and rounds where autograd casts. Only the dropout masks are drawn differently (same
distribution). With `bf16_activations` the same function follows that path's bf16 roundings.

`fused_mlp(model)` swaps it in for the duration of a training step, on MLPs that qualify
(`mlp_reason`): Falcon's MLP with both projections 4-bit (bitsandbytes) and one plain LoRA
adapter each, exact GELU; and Llama-family SwiGLU MLPs through training/fast/fused_swiglu.py.
Anything else keeps PEFT's forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from training.fast import fused_swiglu
from training.fast.fused_mlp_kernels import up_activation_backward, up_activation_forward
from training.fast.fused_swiglu import FusedLoraSwiGLU, is_swiglu_mlp, swiglu_reason
from training.fast.lora_4bit import (
    LoraSpec,
    factor_grads,
    fused_forward,
    lora_backward,
    lora_forward,
    lora_input_grad,
    projections_reason,
)

NAMES = ("dense_h_to_4h", "dense_4h_to_h")


class FusedLoraMLP(torch.autograd.Function):
    """`down(GELU(up(x)))` for 4-bit projections with LoRA; gradients for x and the factors."""

    @staticmethod
    def forward(ctx, x, a1, b1, a2, b2, spec: LoraSpec):  # noqa: D102 - see the class docstring
        act = x.dtype
        up, down = spec.projections
        with torch.autocast(x.device.type, enabled=False):
            rows = x.reshape(-1, x.shape[-1])
            base1 = up.base_forward(rows.to(spec.base_dtype))
            weights = [w.to(spec.lora_dtype) for w in (a1, b1, a2, b2)]
            lora_in1, keep1, t1, update1 = lora_forward(
                rows, weights[0], weights[1], up.dropout, spec.lora_dtype
            )
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
            g, dropped2, keep2 = up_activation_forward(
                base1, update1, up.scale, down.dropout, seed, act
            )
            base2 = down.base_forward(g)
            lora_in2, _, t2, update2 = lora_forward(  # dropout: drawn by the kernel
                dropped2, weights[2], weights[3], 0.0, spec.lora_dtype
            )
            shape = (*x.shape[:-1], base2.shape[-1])  # a fresh tensor, not a view: Falcon
            base2, update2 = base2.view(shape), update2.view(shape)  # adds into it in place
            out = base2.to(act) + (update2 * down.scale).to(act)
        ctx.spec, ctx.act = spec, act
        ctx.weight_dtypes = [w.dtype for w in (a1, b1, a2, b2)]
        ctx.save_for_backward(base1, update1, lora_in1, t1, lora_in2, t2, keep1, keep2, *weights)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        spec, act = ctx.spec, ctx.act
        up, down = spec.projections
        saved = ctx.saved_tensors  # masks too: checkpointing frees and recomputes them all
        base1, update1, lora_in1, t1, lora_in2, t2, keep1, keep2, a1, b1, a2, b2 = saved
        with torch.autocast(grad_out.device.type, enabled=False):
            grad = grad_out.reshape(-1, grad_out.shape[-1])
            grad_update2 = grad.to(spec.lora_dtype) * down.scale
            grad_lora_in2, grad_a2, grad_b2 = lora_backward(grad_update2, a2, b2, lora_in2, t2)
            grad_g = down.base_backward(grad.to(spec.base_dtype))
            grad_base1, grad_update1 = up_activation_backward(
                grad_g, grad_lora_in2, keep2, base1, update1, up.scale, down.dropout, act
            )
            grad_lora_in1, grad_a1, grad_b1 = lora_backward(grad_update1, a1, b1, lora_in1, t1)
            from_lora = lora_input_grad(grad_lora_in1, keep1, up.dropout, act)
            grad_x = up.base_backward(grad_base1).to(act) + from_lora
        grads = factor_grads(ctx, (grad_a1, grad_b1, grad_a2, grad_b2))
        return grad_x.view(grad_out.shape[:-1] + (grad_x.shape[-1],)), *grads, None


def mlp_reason(mlp: Any) -> str | None:
    """Why `FusedLoraMLP` cannot stand in for this MLP's forward, or None when it can."""
    if type(mlp).__name__ != "FalconMLP":
        return f"{type(mlp).__name__} is not Falcon's MLP"
    act = getattr(mlp.act, "act", mlp.act)
    if act is not F.gelu and not (isinstance(act, torch.nn.GELU) and act.approximate == "none"):
        return "the activation is not exact GELU"
    return projections_reason(mlp, NAMES)


@contextmanager
def fused_mlp(model: torch.nn.Module) -> Iterator[int]:
    """Run every qualifying MLP of `model` through `FusedLoraMLP` (Falcon) or
    `training.fast.fused_swiglu.FusedLoraSwiGLU` (Llama family) inside the block; yields how
    many. On exit each module's own forward is back (instance attribute removed).

    With gradient checkpointing, backward recomputes the forward: keep `backward()` inside
    the block too, or the recomputation runs PEFT's forward and checkpointing refuses it.
    """
    swapped = []
    for module in model.modules():
        if type(module).__name__ == "FalconMLP" and not mlp_reason(module):
            module.forward = fused_forward(FusedLoraMLP, module, NAMES)
        elif is_swiglu_mlp(module) and not swiglu_reason(module):
            module.forward = fused_forward(FusedLoraSwiGLU, module, fused_swiglu.NAMES)
        else:
            continue
        swapped.append(module)
    try:
        yield len(swapped)
    finally:
        for module in swapped:
            del module.forward
