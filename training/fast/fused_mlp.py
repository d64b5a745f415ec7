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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from training.fast.fused_mlp_kernels import up_activation_backward, up_activation_forward


@dataclass(frozen=True)
class _Projection:
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
class _Spec:
    up: _Projection
    down: _Projection
    base_dtype: torch.dtype
    lora_dtype: torch.dtype


class FusedLoraMLP(torch.autograd.Function):
    """`down(GELU(up(x)))` for 4-bit projections with LoRA; gradients for x and the factors."""

    @staticmethod
    def forward(ctx, x, a1, b1, a2, b2, spec: _Spec):  # noqa: D102 - see the class docstring
        act = x.dtype
        with torch.autocast(x.device.type, enabled=False):
            rows = x.reshape(-1, x.shape[-1])
            base1 = spec.up.base_forward(rows.to(spec.base_dtype))
            dropped1, keep1 = _dropout(rows, spec.up.dropout)
            weights = [w.to(spec.lora_dtype) for w in (a1, b1, a2, b2)]
            t1 = F.linear(dropped1.to(spec.lora_dtype), weights[0])
            update1 = F.linear(t1, weights[1])
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
            g, dropped2, keep2 = up_activation_forward(
                base1, update1, spec.up.scale, spec.down.dropout, seed, act
            )
            base2 = spec.down.base_forward(g)
            dropped2 = dropped2.to(spec.lora_dtype)
            t2 = F.linear(dropped2, weights[2])
            update2 = F.linear(t2, weights[3])
            shape = (*x.shape[:-1], base2.shape[-1])  # a fresh tensor, not a view: Falcon
            base2, update2 = base2.view(shape), update2.view(shape)  # adds into it in place
            out = base2.to(act) + (update2 * spec.down.scale).to(act)
        ctx.spec, ctx.act = spec, act
        ctx.weight_dtypes = [w.dtype for w in (a1, b1, a2, b2)]
        ctx.save_for_backward(
            base1, update1, dropped1.to(spec.lora_dtype), t1, dropped2, t2, keep1, keep2, *weights
        )
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        spec, act = ctx.spec, ctx.act
        saved = ctx.saved_tensors  # masks too: checkpointing frees and recomputes them all
        base1, update1, lora_in1, t1, lora_in2, t2, keep1, keep2, a1, b1, a2, b2 = saved
        with torch.autocast(grad_out.device.type, enabled=False):
            grad = grad_out.reshape(-1, grad_out.shape[-1])
            grad_base2 = grad.to(spec.base_dtype)
            grad_update2 = grad.to(spec.lora_dtype) * spec.down.scale
            grad_t2 = grad_update2 @ b2
            grad_lora_in2 = grad_t2 @ a2
            grad_g = spec.down.base_backward(grad_base2)
            grad_base1, grad_update1 = up_activation_backward(
                grad_g, grad_lora_in2, keep2, base1, update1, spec.up.scale,
                spec.down.dropout, act,
            )  # fmt: skip
            grad_t1 = grad_update1 @ b1
            grad_lora_in1 = (grad_t1 @ a1).to(act)
            if keep1 is not None:
                grad_lora_in1 = torch.ops.aten.native_dropout_backward(
                    grad_lora_in1, keep1, 1.0 / (1.0 - spec.up.dropout)
                )
            grad_x = spec.up.base_backward(grad_base1).to(act) + grad_lora_in1
            factor_grads = (
                grad_t1.t() @ lora_in1,
                grad_update1.t() @ t1,
                grad_t2.t() @ lora_in2,
                grad_update2.t() @ t2,
            )
        grads = [
            g.to(dtype) if need else None
            for g, dtype, need in zip(
                factor_grads, ctx.weight_dtypes, ctx.needs_input_grad[1:5], strict=True
            )
        ]
        return grad_x.view(grad_out.shape[:-1] + (grad_x.shape[-1],)), *grads, None


def _dropout(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch's dropout and its mask (None when p == 0), as PEFT's `nn.Dropout` draws it."""
    if p == 0:
        return x, None
    return torch.ops.aten.native_dropout(x, p, True)


def _adapter(layer: Any) -> str | None:
    """The one plain LoRA adapter active on a PEFT layer, or None."""
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1 or layer.merged or layer.disable_adapters:
        return None
    name = active[0]
    if name in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(name):
        return None
    return name


def mlp_reason(mlp: Any) -> str | None:
    """Why `FusedLoraMLP` cannot stand in for this MLP's forward, or None when it can."""
    try:
        import bitsandbytes as bnb
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return "bitsandbytes or peft is not installed"
    if type(mlp).__name__ != "FalconMLP":
        return f"{type(mlp).__name__} is not Falcon's MLP"
    act = getattr(mlp.act, "act", mlp.act)
    if act is not F.gelu and not (isinstance(act, torch.nn.GELU) and act.approximate == "none"):
        return "the activation is not exact GELU"
    dtypes: set[torch.dtype | None] = set()
    for name in ("dense_h_to_4h", "dense_4h_to_h"):
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
        return "the two projections compute in different or unset dtypes"
    return None


def _spec(mlp: Any, x: torch.Tensor) -> tuple[_Spec, list[torch.nn.Parameter]]:
    projections, factors = [], []
    for name in ("dense_h_to_4h", "dense_4h_to_h"):
        layer = getattr(mlp, name)
        adapter = _adapter(layer)
        dropout = layer.lora_dropout[adapter]
        p = float(getattr(dropout, "p", 0.0)) if dropout.training else 0.0
        projections.append(_Projection(layer.get_base_layer(), float(layer.scaling[adapter]), p))
        factors += [layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
    autocast = torch.is_autocast_enabled(x.device.type)
    lora_dtype = torch.get_autocast_dtype(x.device.type) if autocast else factors[0].dtype
    base_dtype = projections[0].base.compute_dtype
    return _Spec(projections[0], projections[1], base_dtype, lora_dtype), factors


def _fused_forward(mlp: Any):
    def forward(x: torch.Tensor) -> torch.Tensor:
        spec, factors = _spec(mlp, x)
        return FusedLoraMLP.apply(x, *factors, spec)

    return forward


@contextmanager
def fused_mlp(model: torch.nn.Module) -> Iterator[int]:
    """Run every qualifying MLP of `model` through `FusedLoraMLP` (Falcon) or
    `training.fast.fused_swiglu.FusedLoraSwiGLU` (Llama family) inside the block; yields how
    many. On exit each module's own forward is back (instance attribute removed).

    With gradient checkpointing, backward recomputes the forward: keep `backward()` inside
    the block too, or the recomputation runs PEFT's forward and checkpointing refuses it.
    """
    from training.fast.fused_swiglu import fused_swiglu_forward, is_swiglu_mlp, swiglu_reason

    swapped = []
    for module in model.modules():
        if type(module).__name__ == "FalconMLP" and not mlp_reason(module):
            module.forward = _fused_forward(module)
        elif is_swiglu_mlp(module) and not swiglu_reason(module):
            module.forward = fused_swiglu_forward(module)
        else:
            continue
        swapped.append(module)
    try:
        yield len(swapped)
    finally:
        for module in swapped:
            del module.forward
