"""PEFT LoRA over bitsandbytes 4-bit projections, as the fused MLPs read and run them.

What `fused_mlp.FusedLoraMLP` (Falcon) and `fused_swiglu.FusedLoraSwiGLU` (Llama family)
share: which MLPs qualify (every projection a bias-free 4-bit layer with one plain LoRA
adapter, one compute dtype), reading each projection's base layer, scale, dropout and factors
per call, the LoRA branch's GEMMs both ways, and the forward swapped onto a qualifying MLP.
The arithmetic is the recipe's: the roundings are those of PEFT's autograd graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812


@dataclass(frozen=True)
class LoraProjection:
    """One PEFT LoRA-over-4-bit projection, read once per call."""

    base: Any  # bitsandbytes Linear4bit
    scale: float
    dropout: float  # LoRA dropout probability in effect (0 in eval mode)

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """bitsandbytes' 4-bit matmul, as `Linear4bit.forward` calls it (x in compute dtype)."""
        import bitsandbytes as bnb

        weight = self.base.weight
        return bnb.matmul_4bit(x, weight, quant_state=weight.quant_state)

    def base_backward(self, grad: torch.Tensor) -> torch.Tensor:
        """Input gradient as bitsandbytes' `MatMul4Bit.backward` computes it."""
        import bitsandbytes.functional as bnb_f

        weight = self.base.weight
        dense = bnb_f.dequantize_4bit(weight.data.view(-1, 1), weight.quant_state)
        return torch.matmul(grad, dense.to(grad.dtype))


@dataclass(frozen=True)
class LoraSpec:
    """An MLP's projections in order (Falcon: up, down; SwiGLU: gate, up, down) and the
    dtypes their 4-bit and LoRA GEMMs compute in."""

    projections: tuple[LoraProjection, ...]
    base_dtype: torch.dtype
    lora_dtype: torch.dtype


def dropout(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch's dropout and its mask (None when p == 0), as PEFT's `nn.Dropout` draws it."""
    if p == 0:
        return x, None
    return torch.ops.aten.native_dropout(x, p, True)


def lora_forward(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: float, lora_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(lora_in, keep, t, update): the LoRA branch B(A(dropout(x))) before its scale, with
    the input and mask backward needs; `a`, `b` already in `lora_dtype`."""
    lora_in, keep = dropout(x, p)
    lora_in = lora_in.to(lora_dtype)
    t = F.linear(lora_in, a)
    return lora_in, keep, t, F.linear(t, b)


def lora_backward(
    grad_update: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    lora_in: torch.Tensor,
    t: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad at lora_in, grad A, grad B) of the branch's GEMMs, from the gradient at its
    (scaled) update."""
    grad_t = grad_update @ b
    return grad_t @ a, grad_t.t() @ lora_in, grad_update.t() @ t


def lora_input_grad(
    grad: torch.Tensor, keep: torch.Tensor | None, p: float, act: torch.dtype
) -> torch.Tensor:
    """The gradient at the MLP input from a LoRA branch: in `act`, back through dropout."""
    grad = grad.to(act)
    if keep is None:
        return grad
    return torch.ops.aten.native_dropout_backward(grad, keep, 1.0 / (1.0 - p))


def factor_grads(ctx: Any, grads: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """The LoRA factors' gradients, each in its factor's dtype (`ctx.weight_dtypes`), None
    where autograd asks for none (the function's inputs after x)."""
    needs = ctx.needs_input_grad[1 : 1 + len(grads)]
    return [
        g.to(dtype) if need else None
        for g, dtype, need in zip(grads, ctx.weight_dtypes, needs, strict=True)
    ]


def active_adapter(layer: Any) -> str | None:
    """The one plain LoRA adapter active on a PEFT layer, or None."""
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1 or layer.merged or layer.disable_adapters:
        return None
    name = active[0]
    if name in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(name):
        return None
    return name


def projections_reason(mlp: Any, names: Sequence[str]) -> str | None:
    """Why the projections `names` of `mlp` are not all bias-free, quantized 4-bit layers
    with one plain LoRA adapter each and one compute dtype, or None when they are."""
    try:
        import bitsandbytes as bnb
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return "bitsandbytes or peft is not installed"
    dtypes: set[torch.dtype | None] = set()
    for name in names:
        layer = getattr(mlp, name)
        if not isinstance(layer, LoraLayer) or active_adapter(layer) is None:
            return f"{name} has no single plain LoRA adapter"
        base = layer.get_base_layer()
        if not isinstance(base, bnb.nn.Linear4bit) or base.bias is not None:
            return f"{name} is not a bias-free 4-bit layer"
        if getattr(base.weight, "quant_state", None) is None:
            return f"{name} is not quantized yet"
        dtypes.add(base.compute_dtype)
    if len(dtypes) != 1 or None in dtypes:
        return f"{', '.join(names)} compute in different or unset dtypes"
    return None


def read_spec(
    mlp: Any, names: Sequence[str], x: torch.Tensor
) -> tuple[LoraSpec, list[torch.nn.Parameter]]:
    """The projections `names` of a qualifying MLP as this call runs them (dropout only in
    training, LoRA in autocast's dtype when it is on), and their A and B factors in order."""
    projections, factors = [], []
    for name in names:
        layer = getattr(mlp, name)
        adapter = active_adapter(layer)
        drop = layer.lora_dropout[adapter]
        p = float(getattr(drop, "p", 0.0)) if drop.training else 0.0
        projections.append(LoraProjection(layer.get_base_layer(), float(layer.scaling[adapter]), p))
        factors += [layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
    autocast = torch.is_autocast_enabled(x.device.type)
    lora_dtype = torch.get_autocast_dtype(x.device.type) if autocast else factors[0].dtype
    base_dtype = projections[0].base.compute_dtype
    return LoraSpec(tuple(projections), base_dtype, lora_dtype), factors


def fused_forward(
    function: type[torch.autograd.Function], mlp: Any, names: Sequence[str]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward to set on a qualifying MLP instance for the duration of a step:
    `function.apply(x, *factors, spec)` with the projections read afresh each call."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        spec, factors = read_spec(mlp, names, x)
        return function.apply(x, *factors, spec)

    return forward
