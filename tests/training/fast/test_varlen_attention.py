"""Packed attention from position_ids: same loss and gradients as the masked path, and the
model is back as loaded once the context closes.

On CPU `varlen_attention` runs its per-example SDPA reference, so these tests check the
boundaries, the layouts and the Falcon/interface wiring; the flash kernel itself is compared
on a GPU by bench/train_gpu.py (loss per step against the plain recipe).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tests.training.samples import make_examples
from training.data.packing import collate, pack_rows
from training.fast.memory_plan import activation_bytes_per_token
from training.fast.varlen_attention import VARLEN, boundaries, packed_attention, supports


@pytest.fixture(params=["llama", "falcon"])
def tiny_dir(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(f"tiny_{request.param}_dir")


def lora_model(folder: Path) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="sdpa"
    )
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, config)


def loss_and_grads(model, batch) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return float(loss.detach()), grads


def test_boundaries_are_the_example_starts() -> None:
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    assert boundaries(position_ids).tolist() == [0, 3, 5, 6, 10, 12]
    assert boundaries(position_ids).dtype == torch.int32


def test_packed_attention_equals_the_block_mask(tiny_dir: Path) -> None:
    model = lora_model(tiny_dir)
    assert supports(model)
    examples = make_examples(model.config.vocab_size, [(7, 5), (4, 9), (11, 3), (5, 6), (9, 9)])
    rows = pack_rows(examples, max_seq_len=40)
    assert len(rows) == 2  # two rows, several examples each, tail padding in the shorter
    masked = collate(rows, pad_id=0, attention="sdpa")
    packed = collate(rows, pad_id=0, attention=VARLEN)
    assert "attention_mask" in masked and "attention_mask" not in packed

    expected_loss, expected_grads = loss_and_grads(model, masked)
    with packed_attention(model):
        loss, grads = loss_and_grads(model, packed)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

    # Control: the same batch without boundaries (one long causal row each) differs.
    leaky = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1]).expand(2, -1)}
    with packed_attention(model):
        assert abs(loss_and_grads(model, leaky)[0] - expected_loss) > 1e-3


def test_the_model_is_as_loaded_after_the_context(tiny_falcon_dir: Path) -> None:
    model = lora_model(tiny_falcon_dir)
    attention = model.get_base_model().transformer.h[0].self_attention
    kind = type(attention)
    rows = pack_rows(make_examples(model.config.vocab_size, [(5, 5), (6, 4)]), max_seq_len=32)
    with packed_attention(model):
        assert type(attention) is not kind
        assert model.config._attn_implementation == VARLEN
        loss_and_grads(model, collate(rows, pad_id=0, attention=VARLEN))
    assert type(attention) is kind
    assert model.config._attn_implementation == "sdpa"
    # generate (KV cache, no position_ids from a collate) still works as before.
    out = model.generate(input_ids=torch.tensor([[3, 4, 5]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)


def test_memory_plan_counts_no_probabilities_for_packed_attention(tiny_falcon_dir: Path) -> None:
    config = AutoModelForCausalLM.from_pretrained(tiny_falcon_dir).config
    masked = activation_bytes_per_token(config, checkpointing=False, attention="sdpa")
    packed = activation_bytes_per_token(config, checkpointing=False, attention=VARLEN)
    heads_x_seq = 4.0 * config.num_attention_heads * 512 * config.num_hidden_layers
    assert masked - packed == pytest.approx(heads_x_seq)
