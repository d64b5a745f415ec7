"""bench/train_gpu.py --smoke runs the whole GPU benchmark script on CPU with a tiny Falcon
and, with --model llama, a tiny Llama 3.1 block."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("train_gpu", REPO / "bench" / "train_gpu.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_smoke_writes_every_section(tmp_path: Path) -> None:
    module = load_bench()
    out = tmp_path / "train-gpu.json"
    assert module.main(["--smoke", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["smoke"] and results["linear_4bit"] == 8
    assert results["loss_equality"]["steps_compared"] == 3
    assert results["loss_equality"]["within_1pct"]  # same batches, same seed: same losses
    assert results["teller_16gb"]["gradient_checkpointing"] in {True, False}
    for name in ("baseline", "teller_equal", "teller", "teller_16gb"):
        section = results[name]
        assert section["steps"] == 3 and len(section["first_losses"]) == 3
        assert section["useful_tokens_per_s"] > 0 and 0 < section["mfu"]
        assert section["trainable_params"] == results["baseline"]["trainable_params"]
    assert "SmolLM2 tokenizer" in results["data"]


def test_bench_smoke_llama(tmp_path: Path) -> None:
    """The Llama path: seven adapted projections per layer, the fused SwiGLU MLP in Teller's
    recipe, and the plain recipe's loss on the same batches (within 1 %: LoRA dropout's masks
    are drawn differently; without dropout the losses agree far closer)."""
    module = load_bench()
    out = tmp_path / "train-gpu-llama.json"
    assert module.main(["--smoke", "--model", "llama", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["linear_4bit"] == 14  # 2 layers x q, k, v, o, gate, up, down
    assert results["lora"]["target_modules"][-3:] == ["gate_proj", "up_proj", "down_proj"]
    assert "Llama 3.1 block" in results["model"] and "fused_swiglu" in results["teller"]["recipe"]
    assert results["loss_equality"]["within_1pct"]
    assert results["loss_equality_no_dropout"]["max_rel_diff"] < 1e-4
    for name in ("baseline", "teller_equal", "teller", "teller_16gb"):
        assert results[name]["useful_tokens_per_s"] > 0
