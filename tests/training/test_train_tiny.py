"""The `tiny` preset end to end: loss falls, the package is complete and changes the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.contract import AdapterManifest, PromptFormat, alpaca_prompt, encode_prompt, sha256_file
from training.cli import train_main
from training.config_io import load_config
from training.recipe import TrainingRecipe


@pytest.fixture(scope="module")
def trained(tiny_llama_dir: Path, finance_file: Path, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("tiny-run")
    code = train_main(
        [
            "tiny",
            "--set",
            f"base_model={tiny_llama_dir}",
            f"data.path={finance_file}",
            "--output",
            str(run_dir),
            "--quiet",
        ]
    )
    assert code == 0
    return run_dir


def test_loss_goes_down(trained: Path) -> None:
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 8
    assert losses[-1] < losses[0] - 0.5
    assert {"step", "loss", "lr", "tokens", "tokens_per_s"} <= set(rows[1])
    manifest = AdapterManifest.read(trained / "adapter")
    assert manifest.metrics["eval_loss"] < manifest.metrics["base_eval_loss"]
    assert (trained / "loss.png").stat().st_size > 1000


def test_package_is_complete_and_pickle_free(trained: Path, tiny_llama_dir: Path) -> None:
    package = trained / "adapter"
    names = {p.name for p in package.iterdir()}
    assert names == {"adapter_config.json", "adapter_model.safetensors", "teller.json", "README.md"}
    raw = json.loads((package / "teller.json").read_text())
    manifest = AdapterManifest.from_dict(raw)
    assert manifest.name == "tiny-test" and manifest.version is None
    assert manifest.base_model == str(tiny_llama_dir)  # the string as configured
    assert manifest.prompt_format == PromptFormat.ALPACA
    assert manifest.sha256 == sha256_file(package / "adapter_model.safetensors")
    assert manifest.training.steps == 8 and manifest.training.examples > 0
    assert manifest.training.eval_examples > 0 and len(manifest.training.dataset_sha256) == 64
    hyper = manifest.training.hyperparameters
    assert hyper["lora.r"] == 8 and hyper["lora.target_modules"][0] == "q_proj"
    assert "eval_loss" in manifest.metrics
    weights = load_file(str(package / "adapter_model.safetensors"))
    assert weights and all("lora_" in name for name in weights)


def test_adapter_changes_greedy_output(trained: Path, tiny_llama_dir: Path) -> None:
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    text = alpaca_prompt("Simple interest on $300 at 4% for one year?")
    ids = torch.tensor([encode_prompt(tokenizer, text, PromptFormat.ALPACA)])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        bare = base.generate(ids, **kwargs)[0, ids.shape[1] :].tolist()
        tuned_model = PeftModel.from_pretrained(base, str(trained / "adapter")).eval()
        tuned = tuned_model.generate(input_ids=ids, **kwargs)[0, ids.shape[1] :].tolist()
    assert tuned != bare


def test_ctrl_c_saves_adapter_and_resume_finishes(tiny_config, monkeypatch) -> None:
    tiny_config.save_every = 2
    original = TrainingRecipe.train_step
    calls = {"n": 0}

    def interrupt_on_third(self, window):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, window)

    monkeypatch.setattr(TrainingRecipe, "train_step", interrupt_on_third)
    first = TrainingRecipe(tiny_config, progress=False).run()
    assert first.interrupted and first.steps == 2
    manifest = AdapterManifest.read(first.adapter_dir)
    assert manifest.training.steps == 2 and manifest.metrics["interrupted"] == 1.0
    assert (first.adapter_dir / "adapter_model.safetensors").exists()

    monkeypatch.setattr(TrainingRecipe, "train_step", original)
    with pytest.raises(Exception, match="already holds checkpoints"):
        TrainingRecipe(tiny_config, progress=False).run()
    second = TrainingRecipe(tiny_config, resume=True, progress=False).run()
    assert not second.interrupted and second.steps == 8 and len(second.losses) == 6
    steps = [
        json.loads(x).get("step")
        for x in (first.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps.count(1) == 1 and 8 in steps  # appended, not restarted


def test_same_seed_same_losses(tiny_llama_dir: Path, finance_file: Path, tmp_path: Path) -> None:
    def losses(folder: str) -> list[float]:
        config = load_config(
            "tiny",
            [
                f"base_model={tiny_llama_dir}",
                f"data.path={finance_file}",
                "max_steps=2",
                f"output_dir={tmp_path / folder}",
            ],
        )
        return TrainingRecipe(config, progress=False).run().losses

    assert losses("a") == losses("b")
