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

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from training.fast.fused_mlp import _adapter, _dropout, _Projection
from training.fast.fused_swiglu_kernels import swiglu_backward, swiglu_forward

NAMES = ("gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class SwigluSpec:
    gate: _Projection
    up: _Projection
    down: _Projection
    base_dtype: torch.dtype
    lora_dtype: torch.dtype


class FusedLoraSwiGLU(torch.autograd.Function):
    """`down(SiLU(gate(x)) · up(x))` for 4-bit projections with LoRA; gradients for x and the
    six LoRA factors."""

    @staticmethod
    def forward(ctx, x, ag, bg, au, bu, ad, bd, spec: SwigluSpec):  # noqa: D102 - class doc
        act = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            rows = x.reshape(-1, x.shape[-1])
            x_c = rows.to(spec.base_dtype)
            weights = [w.to(spec.lora_dtype) for w in (ag, bg, au, bu, ad, bd)]
            base_g = spec.gate.base_forward(x_c)
            in_g, keep_g = _dropout(rows, spec.gate.dropout)
            in_g = in_g.to(spec.lora_dtype)
            t_g = F.linear(in_g, weights[0])
            update_g = F.linear(t_g, weights[1])
            base_u = spec.up.base_forward(x_c)
            in_u, keep_u = _dropout(rows, spec.up.dropout)
            in_u = in_u.to(spec.lora_dtype)
            t_u = F.linear(in_u, weights[2])
            update_u = F.linear(t_u, weights[3])
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
            gate = (base_g, update_g, spec.gate.scale)
            up = (base_u, update_u, spec.up.scale)
            a_c, in_d, keep_d = swiglu_forward(gate, up, spec.down.dropout, seed, act)
            base_d = spec.down.base_forward(a_c)
            in_d = in_d.to(spec.lora_dtype)
            t_d = F.linear(in_d, weights[4])
            update_d = F.linear(t_d, weights[5])
            out = base_d.to(act) + (update_d * spec.down.scale).to(act)
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
        saved = list(ctx.saved_tensors)
        base_g, update_g, base_u, update_u, in_g, t_g, in_u, t_u, in_d, t_d = saved[:10]
        ag, bg, au, bu, ad, bd = saved[10:16]
        rest = iter(saved[16:])
        keep_g, keep_u, keep_d = (next(rest) if has else None for has in ctx.keeps)
        with torch.autocast(grad_out.device.type, enabled=False):
            grad = grad_out.reshape(-1, grad_out.shape[-1])
            grad_update_d = grad.to(spec.lora_dtype) * spec.down.scale
            grad_t_d = grad_update_d @ bd
            grad_in_d = grad_t_d @ ad
            grad_a = spec.down.base_backward(grad.to(spec.base_dtype))
            grad_base_g, grad_update_g, grad_base_u, grad_update_u = swiglu_backward(
                grad_a, grad_in_d, keep_d,
                (base_g, update_g, spec.gate.scale), (base_u, update_u, spec.up.scale),
                spec.down.dropout, act,
            )  # fmt: skip
            grad_t_g = grad_update_g @ bg
            grad_t_u = grad_update_u @ bu
            from_g = _lora_input_grad(grad_t_g @ ag, keep_g, spec.gate.dropout, act)
            from_u = _lora_input_grad(grad_t_u @ au, keep_u, spec.up.dropout, act)
            # Summed in the order autograd accumulates x's four uses (the last made, first).
            grad_x = from_u + spec.up.base_backward(grad_base_u).to(act)
            grad_x = grad_x + from_g
            grad_x = grad_x + spec.gate.base_backward(grad_base_g).to(act)
            factor_grads = (
                grad_t_g.t() @ in_g,
                grad_update_g.t() @ t_g,
                grad_t_u.t() @ in_u,
                grad_update_u.t() @ t_u,
                grad_t_d.t() @ in_d,
                grad_update_d.t() @ t_d,
            )
        grads = [
            g.to(dtype) if need else None
            for g, dtype, need in zip(
                factor_grads, ctx.weight_dtypes, ctx.needs_input_grad[1:7], strict=True
            )
        ]
        return grad_x.view(*grad_out.shape[:-1], grad_x.shape[-1]), *grads, None


def _lora_input_grad(
    grad: torch.Tensor, keep: torch.Tensor | None, p: float, act: torch.dtype
) -> torch.Tensor:
    grad = grad.to(act)
    if keep is None:
        return grad
    return torch.ops.aten.native_dropout_backward(grad, keep, 1.0 / (1.0 - p))


def is_swiglu_mlp(mlp: Any) -> bool:
    """A module shaped like transformers' Llama/Mistral/Qwen2 MLP."""
    return all(hasattr(mlp, name) for name in (*NAMES, "act_fn")) and type(mlp).__name__.endswith(
        "MLP"
    )


def swiglu_reason(mlp: Any) -> str | None:
    """Why `FusedLoraSwiGLU` cannot stand in for this MLP's forward, or None when it can."""
    try:
        import bitsandbytes as bnb
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return "bitsandbytes or peft is not installed"
    if not is_swiglu_mlp(mlp):
        return f"{type(mlp).__name__} is not a gate/up/down SwiGLU MLP"
    act = mlp.act_fn
    if not (isinstance(act, torch.nn.SiLU) or type(act).__name__ == "SiLUActivation"):
        return f"the activation is {type(act).__name__}, not SiLU"
    if type(mlp).forward.__qualname__.split(".")[0] not in _KNOWN_FORWARDS:
        return f"{type(mlp).__name__}'s forward is not known to be down(act(gate(x)) * up(x))"
    dtypes: set[torch.dtype | None] = set()
    for name in NAMES:
        layer = getattr(mlp, name)
        if not isinstance(layer, LoraLayer) or _adapter(layer) is None:
            return f"{name} has no single plain LoRA adapter"
        base = layer.get_base_layer()
        if not isinstance(base, bnb.nn.Linear4bit) or base.bias is not None:
            return f"{name} is not a bias-free 4-bit layer"
        if getattr(base.weight, "quant_state", None) is None:
            return f"{name} is not quantized yet"
        dtypes.add(base.compute_dtype)
    if len(dtypes) != 1 or None in dtypes:
        return "the three projections compute in different or unset dtypes"
    return None


_KNOWN_FORWARDS = {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"}
"""transformers classes whose forward is exactly `down(act(gate(x)) * up(x))`."""


def _spec(mlp: Any, x: torch.Tensor) -> tuple[SwigluSpec, list[torch.nn.Parameter]]:
    projections, factors = [], []
    for name in NAMES:
        layer = getattr(mlp, name)
        adapter = _adapter(layer)
        dropout = layer.lora_dropout[adapter]
        p = float(getattr(dropout, "p", 0.0)) if dropout.training else 0.0
        projections.append(_Projection(layer.get_base_layer(), float(layer.scaling[adapter]), p))
        factors += [layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
    autocast = torch.is_autocast_enabled(x.device.type)
    lora_dtype = torch.get_autocast_dtype(x.device.type) if autocast else factors[0].dtype
    base_dtype = projections[0].base.compute_dtype
    gate, up, down = projections
    return SwigluSpec(gate, up, down, base_dtype, lora_dtype), factors


def fused_swiglu_forward(mlp: Any):
    """The forward to set on a qualifying MLP instance for the duration of a step."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        spec, factors = _spec(mlp, x)
        return FusedLoraSwiGLU.apply(x, *factors, spec)

    return forward
