"""The 4-bit QLoRA path on CPU: bitsandbytes quantizes the tiny Falcon (quantize_on_cpu)."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch

from training.config_io import load_config
from training.data.encoding import Example
from training.data.packing import Row, attention_of, collate
from training.model_build import SetupError, build_trainable_model, check_quantization_possible
from training.recipe import TrainingRecipe


def falcon_nf4(tiny_falcon_dir: Path, finance_file: Path, tmp_path: Path, *extra: str):
    return load_config(
        "tiny",
        [
            f"base_model={tiny_falcon_dir}",
            f"data.path={finance_file}",
            "quantization=nf4",
            "quantize_on_cpu=true",
            "gradient_checkpointing=true",
            f"output_dir={tmp_path / 'run'}",
            *extra,
        ],
    )


def test_nf4_falcon_has_linear4bit_and_only_lora_learns(tiny_falcon_dir, finance_file, tmp_path):
    built = build_trainable_model(falcon_nf4(tiny_falcon_dir, finance_file, tmp_path))
    model = built.model
    assert built.loaded.quantization == "nf4"
    assert built.loaded.linear_4bit == 8  # 2 layers x (query_key_value, dense, 4h, 4h back)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 8
    assert built.target_modules == ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 8 * 2  # lora_A and lora_B per adapted layer

    frozen_before = {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if not p.requires_grad and p.dtype.is_floating_point
    }
    examples = [
        Example(list(range(10, 30)), [-100] * 8 + list(range(18, 30))),
        Example(list(range(40, 52)), [-100] * 5 + list(range(45, 52))),
    ]
    batch = collate([Row(tuple(examples))], pad_id=0, pad_to=40, attention=attention_of(model))
    model.train()
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
        else:
            assert param.grad is None, name
    # lora_B starts at zero, so only B gets a gradient on the first step
    assert all(float(p.grad.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    for name, param in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(param, frozen_before[name]), name


def test_evaluation_does_not_break_4bit_gradients(tiny_falcon_dir, finance_file, tmp_path):
    """An eval pass must not leave the 4-bit weights in bitsandbytes' inference-only layout."""
    model = build_trainable_model(falcon_nf4(tiny_falcon_dir, finance_file, tmp_path)).model
    with torch.no_grad():  # give lora_B weight so gradients reach every adapter
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    ids = torch.arange(20, 44).unsqueeze(0)

    def lora_grads() -> dict[str, torch.Tensor]:
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    before = lora_grads()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    after = lora_grads()
    for name, grad in before.items():
        torch.testing.assert_close(after[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_nf4_recipe_runs_and_saves(tiny_falcon_dir, finance_file, tmp_path) -> None:
    config = falcon_nf4(
        tiny_falcon_dir, finance_file, tmp_path, "max_steps=2", "data.max_eval_examples=4"
    )
    result = TrainingRecipe(config, progress=False).run()
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    assert result.manifest.training.hyperparameters["quantization"] == "nf4"


def test_4bit_preset_without_cuda_stops_with_one_line(monkeypatch) -> None:
    import training.model_build as model_build

    monkeypatch.setattr(model_build, "has_cuda", lambda: False)
    with pytest.raises(SetupError, match="needs a CUDA GPU and none is visible") as caught:
        check_quantization_possible(load_config("falcon-7b-qlora"))
    assert "\n" not in str(caught.value)
