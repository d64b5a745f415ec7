"""Packing never lets one example attend to another: packed loss == loss run one by one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.training.samples import make_examples
from training.data.encoding import IGNORE_INDEX, Example
from training.data.packing import Row, collate, pack_rows


def separate_loss(model, examples: list[Example], pad_id: int) -> tuple[float, list[torch.Tensor]]:
    """Token-weighted mean loss and logits, each example alone in its own forward pass."""
    total, count, logits = 0.0, 0, []
    for example in examples:
        batch = collate([Row((example,))], pad_id, attention=None)
        assert "attention_mask" not in batch  # one example, no padding: plain causal
        out = model(**batch, use_cache=False)
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        total += float(out.loss) * n
        count += n
        logits.append(out.logits[0])
    return total / count, logits


@pytest.fixture(params=["llama", "falcon"])
def tiny_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"tiny_{request.param}_dir")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_loss_equals_separate_loss(tiny_dir: Path, attention: str) -> None:
    model = AutoModelForCausalLM.from_pretrained(
        tiny_dir, dtype=torch.float32, attn_implementation=attention
    ).eval()
    pad_id = model.config.pad_token_id or 0
    examples = make_examples(model.config.vocab_size, [(7, 5), (4, 9), (11, 3), (5, 6)])
    rows = pack_rows(examples, max_seq_len=64)
    assert len(rows) == 1 and len(rows[0].examples) == 4  # all four share one row

    batch = collate(rows, pad_id, pad_to=64, attention=attention)  # tail padding too
    with torch.no_grad():
        packed = model(**batch, use_cache=False)
        expected_loss, expected_logits = separate_loss(model, list(rows[0].examples), pad_id)
    assert float(packed.loss) == pytest.approx(expected_loss, rel=1e-5, abs=1e-5)
    start = 0
    for example, logits in zip(rows[0].examples, expected_logits, strict=True):
        end = start + len(example)
        torch.testing.assert_close(packed.logits[0, start:end], logits, rtol=1e-4, atol=1e-4)
        start = end

    # Control: with a plain causal mask the examples do see each other and the loss moves.
    leaky = {k: v for k, v in batch.items() if k != "attention_mask"}
    leaky["position_ids"] = torch.arange(64).unsqueeze(0)
    with torch.no_grad():
        assert abs(float(model(**leaky, use_cache=False).loss) - expected_loss) > 1e-3


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_llama_isolates_packed_examples_from_position_ids_alone(
    tiny_llama_dir: Path, attention: str
) -> None:
    """transformers' own packed-sequence detection (no mask passed) works for Llama, which is
    why flash attention may rely on it; Falcon 5.17 lacks it, hence the explicit mask."""
    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, dtype=torch.float32, attn_implementation=attention
    ).eval()
    examples = make_examples(model.config.vocab_size, [(6, 6), (3, 8), (9, 4)], seed=1)
    batch = collate(pack_rows(examples, 64), pad_id=0, attention=None)
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = float(model(**batch, use_cache=False).loss)
        expected, _ = separate_loss(model, examples, pad_id=0)
    assert packed == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_first_token_of_each_example_is_never_a_target() -> None:
    examples = [Example([1, 2, 3], [1, 2, 3]), Example([4, 5], [4, 5])]  # no prompt mask at all
    batch = collate([Row(tuple(examples))], pad_id=0)
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, 2, 3, IGNORE_INDEX, 5]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 0, 1]


def test_bin_packing_fills_rows_and_keeps_every_example() -> None:
    examples = make_examples(100, [(3, n) for n in [50, 40, 30, 20, 10, 60, 5, 90, 12, 33]])
    rows = pack_rows(examples, max_seq_len=128)
    assert all(len(row) <= 128 for row in rows)
    assert sorted(len(e) for r in rows for e in r.examples) == sorted(len(e) for e in examples)
    lower_bound = -(-sum(len(e) for e in examples) // 128)
    assert len(rows) <= lower_bound + 1  # best-fit decreasing: near the optimum, not 10 rows
