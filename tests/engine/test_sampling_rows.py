"""Batched sampling: every row drawn under its own temperature, top-k and top-p."""

from __future__ import annotations

import torch

from app.engine.sampling import sample_rows
from app.engine.types import SamplingParams

LOGITS = torch.tensor([0.0, 1.0, 2.0, 3.0])
"""softmax: 0.032, 0.087, 0.237, 0.644."""


def frequencies(params: SamplingParams, rows: int = 20_000) -> torch.Tensor:
    torch.manual_seed(0)
    tokens = sample_rows(LOGITS.repeat(rows, 1), [params] * rows)
    return torch.bincount(tokens, minlength=4).float() / rows


def test_plain_temperature_follows_the_softmax() -> None:
    expected = torch.softmax(LOGITS / 0.5, dim=0)
    assert torch.allclose(frequencies(SamplingParams(temperature=0.5)), expected, atol=0.015)


def test_top_k_keeps_the_k_best_renormalised() -> None:
    got = frequencies(SamplingParams(temperature=1.0, top_k=2))
    expected = torch.tensor([0.0, 0.0, 0.2689, 0.7311])
    assert got[:2].sum() == 0
    assert torch.allclose(got, expected, atol=0.015)


def test_top_p_keeps_the_smallest_head_reaching_p() -> None:
    got = frequencies(SamplingParams(temperature=1.0, top_p=0.7))  # 0.644 < 0.7: two tokens
    assert got[:2].sum() == 0
    assert torch.allclose(got, torch.tensor([0.0, 0.0, 0.2689, 0.7311]), atol=0.015)


def test_each_row_keeps_its_own_settings_in_one_call() -> None:
    torch.manual_seed(1)
    scores = torch.randn(6, 50)
    params = [
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=0.8, top_p=1e-6),
        SamplingParams(temperature=2.0, top_k=1, top_p=0.5),
        SamplingParams(temperature=1.0, top_k=3),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=1.0, top_k=1),
    ]
    for _ in range(20):
        tokens = sample_rows(scores, params)
        best = scores.argmax(dim=1)
        assert tokens[[0, 1, 2, 5]].tolist() == best[[0, 1, 2, 5]].tolist()
        assert tokens[3].item() in torch.topk(scores[3], 3).indices.tolist()
