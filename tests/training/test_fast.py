"""The speed-ups keep the loss: chunked loss == the model's own loss (value and gradients),
frozen weights move to bf16 while the adapter stays fp32, and the memory plan fits its budget."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tests.training.test_packing import make_examples
from training.config_io import load_config
from training.encoding import IGNORE_INDEX
from training.fast import (
    activation_bytes_per_token,
    chunked_loss,
    keep_frozen_in,
    norm_outputs_in,
    plan_memory,
)
from training.packing import collate, pack_rows
from training.recipe import TrainingRecipe


def lora_model(folder: Path):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    return get_peft_model(base, config)


@pytest.mark.parametrize("arch", ["llama", "falcon"])
def test_chunked_loss_matches_model_loss_and_gradients(
    arch: str, request: pytest.FixtureRequest
) -> None:
    model = lora_model(request.getfixturevalue(f"tiny_{arch}_dir"))
    examples = make_examples(model.config.vocab_size, [(7, 5), (4, 9), (11, 3), (5, 6), (3, 20)])
    batch = collate(pack_rows(examples, max_seq_len=32), pad_id=0, attention="sdpa")
    n_items = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    params = [p for p in model.parameters() if p.requires_grad]

    reference = model(**batch, use_cache=False, num_items_in_batch=n_items).loss
    expected = torch.autograd.grad(reference, params)
    ours = chunked_loss(model, batch, n_items, chunk=7)  # several chunks, one partial
    got = torch.autograd.grad(ours, params)

    assert float(ours.detach()) == pytest.approx(float(reference.detach()), rel=1e-5)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


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


FALCON_7B = SimpleNamespace(
    hidden_size=4544, num_hidden_layers=32, ffn_hidden_size=18176, num_attention_heads=71
)


def test_memory_plan_prefers_no_recompute_when_it_fits_and_keeps_rows_per_step() -> None:
    fixed = 6 * 2**30
    roomy = plan_memory(80, model_config=FALCON_7B, fixed=fixed, seq_len=512, rows_per_step=16)
    assert not roomy.gradient_checkpointing and roomy.micro_batch_size >= 8
    assert roomy.micro_batch_size * roomy.grad_accum == 16
    assert roomy.estimated_gib <= 80 * 0.9
    # Measured on an H200 (bench/results/train-gpu.json): 16 x 512 rows without recompute
    # peaked at 101 GiB, so an 80 GB card must not be planned for them.
    assert roomy.micro_batch_size == 8
    h200 = plan_memory(139, model_config=FALCON_7B, fixed=fixed, seq_len=512, rows_per_step=16)
    assert h200.micro_batch_size == 16 and h200.estimated_gib >= 95

    small = plan_memory(16, model_config=FALCON_7B, fixed=fixed, seq_len=512, rows_per_step=16)
    assert small.gradient_checkpointing and small.estimated_gib < 15
    assert small.micro_batch_size * small.grad_accum >= 16

    with pytest.raises(ValueError, match="too small"):
        plan_memory(6, model_config=FALCON_7B, fixed=fixed, seq_len=512, rows_per_step=16)


def test_recomputation_saves_most_activation_memory() -> None:
    full = activation_bytes_per_token(FALCON_7B, checkpointing=False)
    saved = activation_bytes_per_token(FALCON_7B, checkpointing=True)
    assert saved < full / 10


def test_recipe_with_memory_budget_chooses_its_layout(
    tiny_llama_dir: Path, finance_file: Path, tmp_path: Path
) -> None:
    config = load_config(
        "tiny",
        [
            f"base_model={tiny_llama_dir}",
            f"data.path={finance_file}",
            f"output_dir={tmp_path / 'run'}",
            "memory_budget_gb=4",
            "max_steps=1",
        ],
    )
    rows_per_step = config.micro_batch_size * config.grad_accum
    recipe = TrainingRecipe(config, progress=False)
    recipe.setup()
    assert recipe.config.micro_batch_size * recipe.config.grad_accum >= rows_per_step
    assert not recipe.config.gradient_checkpointing  # a tiny model fits 4 GB without it
    assert not recipe.model.get_base_model().is_gradient_checkpointing
