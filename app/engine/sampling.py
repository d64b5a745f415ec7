"""Choosing the next token from logits: greedy, temperature, top-k, top-p."""

from __future__ import annotations

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
