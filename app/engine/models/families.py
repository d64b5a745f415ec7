"""Which batched forward serves a model, by architecture family, and the interface they share.

The batch scheduler and its CUDA graphs talk to a `BatchedForward`: a `SlotBatch`
(models/slot_batch.py) over one family's blocks, each family in its own module (`falcon`,
`llama`); `unsupported_reason` says why a model takes none of them (the sequential scheduler
then serves it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from app.engine.models import falcon, llama
from app.engine.models.lora_bank import LoraBank
from app.engine.models.peft_layout import base_model
from app.engine.models.projections import LinearOverride


class BatchedForward(Protocol):
    """A family's weights, KV cache with `slots` sequence slots, and adapter factors."""

    device: torch.device
    dtype: torch.dtype
    slots: int
    max_tokens: int
    lora: LoraBank

    def set_adapters(self, model: Any) -> None: ...

    def prefill(self, slot: int, token_ids: Sequence[int], adapter: str | None) -> torch.Tensor:
        """Logits (V,) after running a prompt into `slot`."""
        ...

    def prefill_many(
        self,
        slots: Sequence[int],
        prompts: Sequence[Sequence[int]],
        adapters: Sequence[str | None],
    ) -> torch.Tensor:
        """Logits (N, V) after running N prompts into their slots in one forward."""
        ...

    def decode(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        context: int,
        *,
        adapters: Sequence[str | None] | None = None,
        lora_mask: torch.Tensor | None = None,
        lora_slot: int | None = None,
    ) -> torch.Tensor:
        """Logits (B, V) for one token in each of slots 0..B-1."""
        ...

    def move(self, source: int, target: int) -> None: ...


def family(model: Any) -> str | None:
    """`falcon`, `llama` (Llama, Mistral, Qwen2, SmolLM2) or None."""
    model_type = base_model(model).config.model_type
    if model_type == "falcon":
        return "falcon"
    return "llama" if model_type in llama.FAMILY else None


def unsupported_reason(model: Any, max_tokens: int | None = None) -> str | None:
    """Why no batched forward can run this model (with `max_tokens` per slot), or None."""
    kind = family(model)
    if kind == "falcon":
        return falcon.unsupported_reason(model)
    if kind == "llama":
        return llama.unsupported_reason(model, max_tokens)
    return f"architecture {base_model(model).config.model_type} has no batched path"


def batched_forward(
    model: Any,
    *,
    slots: int,
    max_tokens: int,
    linear_override: LinearOverride | None = None,
) -> BatchedForward:
    """The family's batched forward over `model`.

    Raises:
        ValueError: the model is of no family with a batched forward.
    """
    reason = unsupported_reason(model, max_tokens)
    if reason is not None:
        raise ValueError(reason)
    cls = falcon.FalconBatch if family(model) == "falcon" else llama.LlamaBatch
    return cls(model, slots=slots, max_tokens=max_tokens, linear_override=linear_override)
