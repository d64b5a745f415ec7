"""Held-out loss and numeric-answer checking, shared by the training run and `teller eval`."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from typing import Any

import torch

from training.data.packing import Row, attention_of, collate, count_tokens
from training.fast.chunked_loss import chunk_tokens, chunked_loss, supports_chunked_loss

_ANSWER = re.compile(r"Answer:\s*\**\s*[^\d\-+.]{0,8}?([-+]?\d[\d,]*(?:\.\d+)?|[-+]?\.\d+)")


def autocast_for(
    device: torch.device, dtype: torch.dtype
) -> contextlib.AbstractContextManager[Any]:
    """bf16/fp16 autocast on CUDA (what the QLoRA recipe computes in); nothing on CPU."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _chunks(rows: list[Row], size: int) -> Iterator[list[Row]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


@torch.no_grad()
def heldout_loss(
    model: Any,
    rows: list[Row],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[float, int]:
    """Mean loss per response token over `rows`, and how many tokens that was.

    Packed rows give the same number as one example at a time (see packing.py). Only the
    response positions go through the vocabulary head (`chunked_loss`): the full logits of a
    batch of 4 x 512 tokens over SmolLM2's 49K vocabulary are 0.4 GB of fp32 per copy, and the
    cross-entropy of them made several.
    """
    was_training = model.training
    model.eval()
    chunked = supports_chunked_loss(model)
    total, tokens = 0.0, 0
    try:
        for chunk in _chunks(rows, batch_size):
            batch = collate(chunk, pad_id, attention=attention_of(model))
            _, n = count_tokens(batch, chunk)
            if n == 0:
                continue
            inputs = {k: v.to(device) for k, v in batch.items()}
            with autocast_for(device, dtype):
                if chunked:
                    n_items = torch.tensor(n, device=device)
                    loss = chunked_loss(model, inputs, n_items, chunk_tokens(device))
                else:
                    loss = model(**inputs, use_cache=False).loss
            total += float(loss) * n
            tokens += n
    finally:
        model.train(was_training)
    return (total / tokens if tokens else float("nan")), tokens


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


def parse_answer(text: str) -> float | None:
    """The number after the first `Answer:` in a generation (commas, $, % tolerated)."""
    matches = _ANSWER.findall(text)
    if not matches:
        return None
    try:
        return float(matches[0].replace(",", ""))
    except ValueError:
        return None


def is_close(predicted: float | None, expected: float, rel_tol: float = 0.01) -> bool:
    """Within 1% (relative) of the expected answer; exact zero needs |x| < 1e-9."""
    if predicted is None:
        return False
    if expected == 0:
        return abs(predicted) < 1e-9
    return abs(predicted - expected) <= rel_tol * abs(expected)
