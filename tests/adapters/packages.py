"""Adapter packages for tests: real PEFT LoRA files for the tiny models, built in a second.

`init_lora_weights=False` gives random non-zero A and B, so every package changes the model's
output (a freshly initialised LoRA has B = 0 and would be indistinguishable from the base).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

from app.contract import AdapterManifest, PromptFormat, sha256_file


def make_package(
    base_dir: Path,
    out: Path,
    *,
    name: str = "finance",
    seed: int = 0,
    rank: int = 4,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    scale: float = 4.0,
    base_model: str | None = None,
    manifest: bool = True,
) -> Path:
    """Write a LoRA package for the model at `base_dir` into `out` and return `out`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for param_name, param in peft_model.named_parameters():
            if "lora_B" in param_name:
                param.mul_(scale)
    peft_model.save_pretrained(str(out), safe_serialization=True)
    config_path = out / "adapter_config.json"
    data = json.loads(config_path.read_text())
    data["base_model_name_or_path"] = base_model or str(base_dir)
    config_path.write_text(json.dumps(data, indent=2))
    (out / "README.md").unlink(missing_ok=True)
    if manifest:
        AdapterManifest(
            name=name,
            base_model=base_model or str(base_dir),
            prompt_format=PromptFormat.ALPACA,
            metrics={"eval_loss": 1.5 + seed},
            sha256=sha256_file(out / "adapter_model.safetensors"),
        ).write(out)
        (out / "README.md").write_text(f"# {name}\n\nA test adapter.\n")
    return out


def zip_folder(folder: Path, archive: Path, *, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted(folder.iterdir()):
            bundle.write(path, prefix + path.name)
    return archive


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes: equal snapshots mean an unchanged store."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }
