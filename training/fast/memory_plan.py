"""The micro-batch / gradient-checkpointing choice for a memory budget.

`plan_memory` picks the largest micro-batch that fits a budget, without recomputation when that
still gives the GPU enough tokens per matmul, keeping tokens per optimizer step unchanged.
`set_gradient_checkpointing` applies its recomputation choice to the model.

Runs on CPU too (the tests use it with tiny models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from training.fast.varlen_attention import VARLEN


@dataclass(frozen=True)
class MemoryPlan:
    """How a run fits its budget; `estimated_gib` is the plan's expected peak."""

    micro_batch_size: int
    grad_accum: int
    gradient_checkpointing: bool
    estimated_gib: float


def activation_bytes_per_token(
    model_config: Any, checkpointing: bool, seq_len: int = 512, attention: str = "sdpa"
) -> float:
    """Bytes of saved activations per token for the whole decoder (bf16, LoRA dropout on).

    Counted for a Falcon/Llama block: norm output (fp32), attention q/k/v/out, the MLP's
    up/activation outputs, and a dropout copy + mask per LoRA input, rounded up to
    12 x hidden + 4 x intermediate values of 2 bytes per layer. A gated (SwiGLU) MLP, as in
    Llama, Mistral and Qwen2, keeps two more intermediate-wide tensors (the gate and up
    projections' outputs and LoRA updates, the product, the down projection's LoRA input and
    mask: training/fast/fused_swiglu.py saves those): 6 x intermediate. With checkpointing
    only each layer's input is kept, plus one layer recomputed at a time.

    Unless the model runs flash attention (or `VARLEN`, flash attention's variable-length
    form: training/fast/varlen_attention.py), attention with an explicit (packed) mask stores
    fp32 probabilities of heads x seq_len per token and layer: on an H200, Falcon-7B at 16 x
    512 tokens peaked 32.6 GiB above the estimate without this term, 4.2 MB per token against
    the 4.65 MB it adds.
    """
    hidden = int(model_config.hidden_size)
    inter = int(
        getattr(model_config, "intermediate_size", None)
        or getattr(model_config, "ffn_hidden_size", None)
        or 4 * hidden
    )
    layers = int(model_config.num_hidden_layers)
    gated = str(getattr(model_config, "hidden_act", "")) in ("silu", "swish")
    per_layer = 2.0 * (12 * hidden + (6 if gated else 4) * inter)
    if not attention.startswith("flash") and attention != VARLEN:
        per_layer += 4.0 * int(model_config.num_attention_heads) * seq_len
    if checkpointing:
        return layers * 2.0 * hidden + per_layer
    return layers * per_layer


def fixed_bytes(model: torch.nn.Module, trainable: int) -> float:
    """Weights and buffers as stored, plus fp32 grads and two optimizer states per trainable
    parameter (4 bytes each: the pessimistic non-8-bit case), plus 1 GiB of workspace."""
    stored = sum(p.numel() * p.element_size() for p in model.parameters())
    stored += sum(b.numel() * b.element_size() for b in model.buffers())
    return stored + trainable * (4 + 8) + 2**30


def plan_memory(
    budget_gib: float,
    *,
    model_config: Any,
    fixed: float,
    seq_len: int,
    rows_per_step: int,
    min_tokens_without_checkpointing: int = 2048,
    max_micro_batch: int = 16,
    attention: str = "sdpa",
) -> MemoryPlan:
    """The fastest layout that fits `budget_gib` (minus a 10% safety margin).

    Prefers no recomputation (a third less compute) with the largest micro-batch that fits,
    as long as a micro-batch still holds `min_tokens_without_checkpointing` tokens (smaller
    matmuls waste the GPU more than recomputation does); otherwise checkpointing with the
    largest micro-batch that fits. Micro-batches never exceed the configured rows per
    optimizer step, and `grad_accum` keeps that number (rounded up to whole micro-batches).

    Raises:
        ValueError: not even one row fits the budget.
    """
    room = budget_gib * 0.9 * 2**30 - fixed
    largest = max(1, min(max_micro_batch, rows_per_step))
    sizes = [2**k for k in range(int(math.log2(largest)), -1, -1)]
    enough = min(min_tokens_without_checkpointing, sizes[0] * seq_len)
    candidates: list[tuple[bool, int]] = [(False, m) for m in sizes if m * seq_len >= enough] + [
        (True, m) for m in sizes
    ]
    for checkpointing, micro in candidates:
        per_token = activation_bytes_per_token(model_config, checkpointing, seq_len, attention)
        need = per_token * micro * seq_len
        if need <= room:
            accum = max(1, math.ceil(rows_per_step / micro))
            return MemoryPlan(micro, accum, checkpointing, round((fixed + need) / 2**30, 2))
    raise ValueError(
        f"memory_budget_gb={budget_gib} is too small: the model alone needs "
        f"{fixed / 2**30:.1f} GiB and one row of {seq_len} tokens more"
    )


def set_gradient_checkpointing(model: Any, enabled: bool) -> None:
    """Turn recomputation on or off on the (possibly PEFT-wrapped) model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if enabled:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(base, "enable_input_require_grads"):
            base.enable_input_require_grads()
    else:
        base.gradient_checkpointing_disable()
