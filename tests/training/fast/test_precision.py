"""Frozen weights move to bf16 while the adapter stays fp32; opt-in bf16 norm outputs reach
the projections once cast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.training.samples import lora_model, make_examples
from training.data.packing import collate, pack_rows
from training.fast.precision import keep_frozen_in, norm_outputs_in


def test_keep_frozen_in_moves_only_frozen_float_weights(tiny_falcon_dir: Path) -> None:
    model = lora_model(tiny_falcon_dir)
    moved = keep_frozen_in(model, torch.bfloat16)
    assert moved > 0
    for name, param in model.named_parameters():
        expected = torch.float32 if param.requires_grad else torch.bfloat16
        assert param.dtype == expected, name
    assert keep_frozen_in(model, torch.float32) == 0


def test_layer_norm_outputs_reach_the_projections_in_bf16(tiny_falcon_dir: Path) -> None:
    """With `bf16_activations`, under bf16 autocast the fused QKV projection (base layer and
    LoRA branch) gets the norm's output once cast, not fp32 to cast again in each consumer,
    and the loss stays within bf16 rounding of the fp32-activation one."""
    model = lora_model(tiny_falcon_dir)
    model.eval()  # no LoRA dropout: the two runs must see the same operands
    examples = make_examples(model.config.vocab_size, [(6, 6), (5, 8)])
    batch = collate(pack_rows(examples, max_seq_len=32), pad_id=0, attention="sdpa")
    seen: list[torch.dtype] = []
    block = model.get_base_model().transformer.h[1]
    block.self_attention.query_key_value.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].dtype)
    )

    def loss() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            return float(model(**batch, use_cache=False).loss)

    before = loss()
    assert norm_outputs_in(model, torch.bfloat16) == 2 + 1  # 2 block norms, ln_f
    after = loss()
    assert seen == [torch.float32, torch.bfloat16]
    assert after == pytest.approx(before, rel=2e-2)
    assert norm_outputs_in(model, torch.bfloat16) == 0  # hooks are added once
