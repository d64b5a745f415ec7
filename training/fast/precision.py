"""Precision of what stays frozen: bf16 frozen weights, and opt-in bf16 activations.

- `keep_frozen_in`: `prepare_model_for_kbit_training` upcasts every non-quantized weight
  (norms, embeddings, a tied 65K x 4544 head) to fp32. Frozen weights gain nothing from fp32
  under bf16 autocast (layer norm upcasts internally) but cost memory and casts every forward.
- `norm_outputs_in`: layer-norm outputs cast to bf16 where they are made (`bf16_activations`).
"""

from __future__ import annotations

from typing import Any

import torch


def keep_frozen_in(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Cast frozen fp32 floating-point weights (not 4-bit ones) to `dtype`; how many moved."""
    if dtype == torch.float32:
        return 0
    moved = 0
    for param in model.parameters():
        if not param.requires_grad and param.dtype == torch.float32:
            param.data = param.data.to(dtype)
            moved += 1
    return moved


def norm_outputs_in(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Cast every `nn.LayerNorm`'s output to `dtype` where it is made (`bf16_activations`);
    how many norms were hooked.

    Autocast runs layer norm in fp32 and returns fp32. In a Falcon block that output feeds
    the fused QKV and the MLP's up projection, two 4-bit layers and two LoRA branches: each
    casts it to bf16 again, each LoRA dropout runs on it in fp32, and bitsandbytes casts its
    outputs back to the input's fp32, so the 4x-wide MLP and the residual stream run in fp32.
    Cast once at the norm, everything after it stays bf16, and a step runs faster (Falcon-7B,
    16 x 512 tokens: bench/results/train-gpu-bf16-activations.json against train-gpu.json).

    It is not the plain recipe's arithmetic, though: the first steps' loss moves about twenty
    times further from it than the default path's, with or without LoRA dropout and also with
    the residual stream kept in fp32 (`loss_equality` in those files and in
    train-gpu-bf16-activations-checks.json). Hence opt-in.
    Only meaningful under CUDA autocast (on CPU layer norm returns its input's dtype).
    """
    hooked = 0
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm) and not hasattr(module, "_teller_out_dtype"):
            norm: Any = module  # carries an attribute of Teller's own
            norm._teller_out_dtype = dtype
            norm.register_forward_hook(_cast_output)
            hooked += 1
    return hooked


def _cast_output(module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
    return output.to(module._teller_out_dtype)
