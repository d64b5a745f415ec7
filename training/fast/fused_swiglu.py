"""A LoRA-adapted 4-bit SwiGLU MLP (Llama, Mistral, Qwen2) as one autograd function.

The Llama-family counterpart of `training/fast/fused_mlp.py`'s Falcon MLP: PEFT over
bitsandbytes computes `down(SiLU(gate(x)) · up(x))`, each projection `base4bit(x) +
B(A(dropout(x)))·s`, through about forty autograd nodes, most of them elementwise passes over
(tokens x intermediate) tensors. `FusedLoraSwiGLU` runs the same GEMMs (bitsandbytes' 4-bit
matmul and its backward, cuBLAS for LoRA) and everything between gate/up and down in one
kernel each way (training/fast/fused_swiglu_kernels.py), with the recipe's roundings: see
that module's docstring. Only the dropout masks are drawn differently (same distribution).

`fused_mlp(model)` (training/fast/fused_mlp.py) swaps it in on the MLPs `swiglu_reason`
accepts: gate_proj, up_proj and down_proj all bias-free 4-bit layers with one plain LoRA
adapter each, and SiLU as the activation.
"""

from __future__ import annotations

from typing import Any

import torch

from training.fast.fused_swiglu_kernels import swiglu_backward, swiglu_forward
from training.fast.lora_4bit import (
    LoraSpec,
    factor_grads,
    lora_backward,
    lora_forward,
    lora_input_grad,
    projections_reason,
)

NAMES = ("gate_proj", "up_proj", "down_proj")


class FusedLoraSwiGLU(torch.autograd.Function):
    """`down(SiLU(gate(x)) · up(x))` for 4-bit projections with LoRA; gradients for x and the
    six LoRA factors."""

    @staticmethod
    def forward(ctx, x, ag, bg, au, bu, ad, bd, spec: LoraSpec):  # noqa: D102 - class doc
        act = x.dtype
        gate_p, up_p, down_p = spec.projections
        with torch.autocast(x.device.type, enabled=False):
            rows = x.reshape(-1, x.shape[-1])
            x_c = rows.to(spec.base_dtype)
            weights = [w.to(spec.lora_dtype) for w in (ag, bg, au, bu, ad, bd)]
            base_g = gate_p.base_forward(x_c)
            in_g, keep_g, t_g, update_g = lora_forward(
                rows, weights[0], weights[1], gate_p.dropout, spec.lora_dtype
            )
            base_u = up_p.base_forward(x_c)
            in_u, keep_u, t_u, update_u = lora_forward(
                rows, weights[2], weights[3], up_p.dropout, spec.lora_dtype
            )
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
            gate = (base_g, update_g, gate_p.scale)
            up = (base_u, update_u, up_p.scale)
            a_c, dropped, keep_d = swiglu_forward(gate, up, down_p.dropout, seed, act)
            base_d = down_p.base_forward(a_c)
            in_d, _, t_d, update_d = lora_forward(  # dropout: drawn by the kernel
                dropped, weights[4], weights[5], 0.0, spec.lora_dtype
            )
            out = base_d.to(act) + (update_d * down_p.scale).to(act)
        ctx.spec, ctx.act = spec, act
        ctx.weight_dtypes = [w.dtype for w in (ag, bg, au, bu, ad, bd)]
        ctx.keeps = (keep_g is not None, keep_u is not None, keep_d is not None)
        keeps = [k for k in (keep_g, keep_u, keep_d) if k is not None]
        ctx.save_for_backward(
            base_g, update_g, base_u, update_u, in_g, t_g, in_u, t_u, in_d, t_d, *weights, *keeps
        )
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        spec, act = ctx.spec, ctx.act
        gate_p, up_p, down_p = spec.projections
        saved = list(ctx.saved_tensors)
        base_g, update_g, base_u, update_u, in_g, t_g, in_u, t_u, in_d, t_d = saved[:10]
        ag, bg, au, bu, ad, bd = saved[10:16]
        rest = iter(saved[16:])
        keep_g, keep_u, keep_d = (next(rest) if has else None for has in ctx.keeps)
        with torch.autocast(grad_out.device.type, enabled=False):
            grad = grad_out.reshape(-1, grad_out.shape[-1])
            grad_update_d = grad.to(spec.lora_dtype) * down_p.scale
            grad_in_d, grad_ad, grad_bd = lora_backward(grad_update_d, ad, bd, in_d, t_d)
            grad_a = down_p.base_backward(grad.to(spec.base_dtype))
            grad_base_g, grad_update_g, grad_base_u, grad_update_u = swiglu_backward(
                grad_a, grad_in_d, keep_d,
                (base_g, update_g, gate_p.scale), (base_u, update_u, up_p.scale),
                down_p.dropout, act,
            )  # fmt: skip
            grad_in_g, grad_ag, grad_bg = lora_backward(grad_update_g, ag, bg, in_g, t_g)
            grad_in_u, grad_au, grad_bu = lora_backward(grad_update_u, au, bu, in_u, t_u)
            from_g = lora_input_grad(grad_in_g, keep_g, gate_p.dropout, act)
            from_u = lora_input_grad(grad_in_u, keep_u, up_p.dropout, act)
            # Summed in the order autograd accumulates x's four uses (the last made, first).
            grad_x = from_u + up_p.base_backward(grad_base_u).to(act)
            grad_x = grad_x + from_g
            grad_x = grad_x + gate_p.base_backward(grad_base_g).to(act)
        grads = factor_grads(ctx, (grad_ag, grad_bg, grad_au, grad_bu, grad_ad, grad_bd))
        return grad_x.view(*grad_out.shape[:-1], grad_x.shape[-1]), *grads, None


def is_swiglu_mlp(mlp: Any) -> bool:
    """A module shaped like transformers' Llama/Mistral/Qwen2 MLP."""
    return all(hasattr(mlp, name) for name in (*NAMES, "act_fn")) and type(mlp).__name__.endswith(
        "MLP"
    )


def swiglu_reason(mlp: Any) -> str | None:
    """Why `FusedLoraSwiGLU` cannot stand in for this MLP's forward, or None when it can."""
    if not is_swiglu_mlp(mlp):
        return f"{type(mlp).__name__} is not a gate/up/down SwiGLU MLP"
    act = mlp.act_fn
    if not (isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"):
        return f"the activation is {type(act).__name__}, not SiLU"
    if type(mlp).forward.__qualname__.split(".")[0] not in _KNOWN_FORWARDS:
        return f"{type(mlp).__name__}'s forward is not known to be down(act(gate(x)) * up(x))"
    return projections_reason(mlp, NAMES)


_KNOWN_FORWARDS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"}
"""transformers classes whose forward is exactly `down(act(gate(x)) * up(x))`."""
