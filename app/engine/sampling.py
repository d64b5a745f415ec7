"""Choosing the next token from logits: greedy, temperature, top-k, top-p."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from app.engine.types import SamplingParams


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token id from the last position's logits.

    Args:
        logits: (V,) scores for the next token.
        params: temperature 0 means greedy (argmax), which is what tests compare against
            transformers' `generate(do_sample=False)`.
        generator: per-request RNG so a fixed seed repeats an answer.
    """
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    scores = logits.float() / params.temperature  # (V,)
    if params.top_k > 0:
        kth = torch.topk(scores, min(params.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        # Drop tokens once the mass before them already exceeds top_p (keep at least one).
        drop = cumulative - torch.softmax(sorted_scores, dim=-1) > params.top_p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(0, order, sorted_scores)
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def sample_rows(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """One token per row of a batch, each with its own temperature, top-k and top-p.

    The same rules as `sample`, row-wise, in one set of tensor ops: per-row sampling on a
    GPU costs a dozen small kernels and a device sync per row, which at 32 sampled answers
    per step cost more than the model's forward. Rows draw from the global RNG; a request
    with a fixed seed keeps `sample` and its own generator, so its answer still repeats.

    Args:
        logits: (B, V) scores; every row's temperature must be > 0.
        params: one SamplingParams per row.

    Returns:
        (B,) token ids, on the logits' device.
    """
    device = logits.device
    temperature = torch.tensor([p.temperature for p in params], device=device)
    scores = logits.float() / temperature.unsqueeze(1)  # (B, V)
    top_k = [min(p.top_k, scores.shape[1]) if p.top_k > 0 else 0 for p in params]
    if any(top_k):
        widest = max(top_k)
        values = torch.topk(scores, widest, dim=1).values  # (B, widest)
        index = torch.tensor([max(k, 1) - 1 for k in top_k], device=device).unsqueeze(1)
        kth = values.gather(1, index)  # (B, 1)
        keep_all = torch.tensor([k == 0 for k in top_k], device=device).unsqueeze(1)
        scores = scores.masked_fill((scores < kth) & ~keep_all, float("-inf"))
    if any(p.top_p < 1.0 for p in params):  # decided on the host: no wait for the device
        top_p = torch.tensor([p.top_p for p in params], device=device).unsqueeze(1)
        sorted_scores, order = torch.sort(scores, dim=1, descending=True)
        probs = torch.softmax(sorted_scores, dim=1)
        # Drop tokens once the mass before them already exceeds top_p (keep at least one).
        drop = (probs.cumsum(dim=1) - probs > top_p) & (top_p < 1.0)
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(1, order, sorted_scores)
    return torch.multinomial(torch.softmax(scores, dim=1), 1).squeeze(1)
