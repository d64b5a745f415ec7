"""`teller adapters merge`: one bf16 checkpoint that answers like base + adapter (Falcon too,
which vLLM cannot serve with LoRA)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from app.adapters.cli import adapters_main
from tests.adapters.packages import make_package


@pytest.mark.parametrize(
    ("arch", "targets"),
    [("llama", ("q_proj", "v_proj", "down_proj")), ("falcon", ("query_key_value", "dense"))],
)
def test_merged_checkpoint_matches_base_plus_adapter(
    arch: str,
    targets: tuple[str, ...],
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir: Path = request.getfixturevalue(f"tiny_{arch}_dir")
    monkeypatch.setenv("TELLER_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("TELLER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TELLER_BASE_MODEL", str(base_dir))
    package = make_package(base_dir, tmp_path / "pkg", name="desk", targets=targets, scale=1.0)
    assert adapters_main(["import", str(package)]) == 0
    output = tmp_path / "merged"
    assert adapters_main(["merge", "desk@1", "--output", str(output)]) == 0
    assert "(bfloat16 safetensors)" in capsys.readouterr().out

    files = sorted(p.name for p in output.iterdir())
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt"))]
    with safe_open(str(output / "model.safetensors"), "pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"BF16"}
        assert not any("lora" in k for k in weights.keys())
    assert json.loads((output / "teller-merge.json").read_text())["adapter"] == "desk@1"

    tokenizer = AutoTokenizer.from_pretrained(str(output))
    ids = tokenizer("Net present value discounts future cash flows", return_tensors="pt")
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(str(output), dtype=torch.float32)
        got = merged(**ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        plain = base(**ids).logits
        tuned = PeftModel.from_pretrained(base, str(package)).eval()(**ids).logits
    scale = tuned.abs().max()
    adapter_effect = (tuned - plain).abs().max() / scale
    merge_error = (got - tuned).abs().max() / scale
    assert adapter_effect > 0.05  # the adapter changes the model...
    assert merge_error < adapter_effect / 5  # ...and the merged copy keeps that change
    assert adapters_main(["merge", "desk@1", "--output", str(output)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
