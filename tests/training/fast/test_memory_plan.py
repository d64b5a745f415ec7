"""The memory plan fits its budget, prefers no recomputation when that fits, and keeps the
rows per optimizer step; the recipe applies it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from training.config_io import load_config
from training.fast.memory_plan import activation_bytes_per_token, plan_memory
from training.fast.varlen_attention import VARLEN
from training.recipe import TrainingRecipe

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


def test_a_gated_mlp_counts_two_more_intermediate_tensors() -> None:
    from transformers import FalconConfig, LlamaConfig

    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    llama = LlamaConfig(**shape, intermediate_size=256, num_key_value_heads=2)
    falcon = FalconConfig(**shape, ffn_hidden_size=256)
    gated = activation_bytes_per_token(llama, checkpointing=False, attention=VARLEN)
    plain = activation_bytes_per_token(falcon, checkpointing=False, attention=VARLEN)
    assert gated - plain == 2 * 2.0 * 2 * 256  # layers x bytes x two tensors x intermediate
