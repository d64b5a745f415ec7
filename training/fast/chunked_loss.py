"""Cross-entropy over labelled positions only, in vocabulary-head chunks.

The plain `model(labels=...)` path multiplies every position's hidden state by the
65K-vocabulary head and upcasts the (tokens x vocab) logits to fp32 (2 GB at 8K tokens, kept
for backward). Here only positions that carry a label go through the head, in chunks whose
logits are recomputed in backward instead of stored; the sum is the same cross-entropy.

Runs on CPU too (the tests use it with tiny models).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.checkpoint import checkpoint

from training.data.encoding import IGNORE_INDEX

CHUNK_TOKENS = 2048
"""Labelled positions per head/cross-entropy chunk on a GPU: 2048 x 65K fp32 logits is 0.5 GB."""
CPU_CHUNK_TOKENS = 256
"""On CPU, where the memory of a laptop is the limit: 256 x 49K fp32 logits is 50 MB (and a
256-row head matmul is still large enough to run at full speed)."""


def chunk_tokens(device: torch.device) -> int:
    """Labelled positions per chunk on `device`; the loss is the same for any chunk size."""
    return CHUNK_TOKENS if device.type == "cuda" else CPU_CHUNK_TOKENS


def _ce_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def _causal_lm(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_chunked_loss(model: Any) -> bool:
    """Whether `chunked_loss` applies: a bias-free output head (every model Teller trains)."""
    head = _causal_lm(model).get_output_embeddings()
    return head is not None and getattr(head, "bias", None) is None


def chunked_loss(
    model: Any, batch: dict[str, torch.Tensor], n_items: torch.Tensor, chunk: int = CHUNK_TOKENS
) -> torch.Tensor:
    """Mean next-token cross-entropy over the window's `n_items` response tokens.

    Equal to the `loss` of `model(**batch, num_items_in_batch=n_items)` (the tests check it),
    without materializing full logits. The decoder body is called directly, so LoRA layers
    (replaced in place by PEFT) still apply.
    """
    causal_lm = _causal_lm(model)
    body = causal_lm.base_model
    head = causal_lm.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError("chunked_loss supports bias-free output heads only")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = body(**inputs, use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    picked, wanted = hidden[:, :-1][keep], targets[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, picked.shape[0], chunk):
        part = (picked[start : start + chunk], head.weight, wanted[start : start + chunk])
        if torch.is_grad_enabled():
            total = total + checkpoint(_ce_sum, *part, use_reentrant=False)
        else:
            total = total + _ce_sum(*part)
    return total / n_items
