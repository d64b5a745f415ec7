"""`teller adapters merge`: base + LoRA as one bf16 checkpoint, for servers without LoRA.

vLLM serves LoRA for Llama-family bases but not for Falcon; a merged checkpoint is a plain
model folder it serves under its own model id. The base is loaded unquantized (a 4-bit base
cannot absorb the LoRA delta exactly), the delta is added in float32 and the result is
written as bfloat16 safetensors next to the base's tokenizer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from app.adapters.errors import AdapterError
from app.adapters.registry import AdapterVersion

MERGE_NOTE = "teller-merge.json"


def merge_adapter(version: AdapterVersion, base_source: str, output: Path) -> Path:
    """Write the merged model to `output` (staged, then renamed into place).

    Raises:
        AdapterError: `output` exists and is not empty, or the base cannot be loaded.
    """
    import torch
    from peft import PeftModel

    from app.engine.loader import ModelLoadError, load_base_model

    if output.exists() and any(output.iterdir()):
        raise AdapterError(f"{output} exists and is not empty; choose a new --output folder")
    try:
        loaded = load_base_model(base_source, device="cpu", quantization="none", dtype="float32")
    except ModelLoadError as exc:
        raise AdapterError(str(exc)) from None
    model = PeftModel.from_pretrained(loaded.model, str(version.path))
    merged = model.merge_and_unload().to(torch.bfloat16)
    merged.config.torch_dtype = torch.bfloat16
    staging = output.with_name(output.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(str(staging), safe_serialization=True)
    loaded.tokenizer.save_pretrained(str(staging))
    note = {
        "base_model": base_source,
        "adapter": version.ref,
        "adapter_sha256": version.sha256,
        "prompt_format": str(version.manifest.prompt_format),
        "dtype": "bfloat16",
    }
    (staging / MERGE_NOTE).write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
    if output.exists():
        output.rmdir()
    staging.rename(output)
    return output
