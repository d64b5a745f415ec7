"""Loading a base model (local folder, `.gguf` file or hub id), in 4-bit NF4 on CUDA.

Both the server and `training/` load models through `load_base_model`, so the Falcon 4-bit
fix below applies to serving and training alike.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.engine.capabilities import has_bitsandbytes, has_gguf, resolve_device, supports_bf16

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to change."""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    source: str
    device: torch.device
    dtype: torch.dtype
    quantization: str
    """`nf4`, `8bit` or `none`: what was really applied, not what was asked for."""
    linear_4bit: int = 0
    """How many `bnb.nn.Linear4bit` modules the model holds (0 unless quantized to 4-bit)."""


@contextlib.contextmanager
def falcon_linear_as_plain_linear() -> Iterator[None]:
    """Build Falcon with `nn.Linear` in place of its `FalconLinear` subclass.

    transformers 5.x swaps only modules whose type *is* `nn.Linear` for bitsandbytes layers, so
    Falcon's `FalconLinear` (an `nn.Linear` subclass with the same maths) silently stays in
    bf16 under a 4-bit config. Both compute `x @ W.T + b`, so the swap changes no results.
    """
    from transformers.models.falcon import modeling_falcon

    original = modeling_falcon.FalconLinear
    setattr(modeling_falcon, "FalconLinear", nn.Linear)  # noqa: B010 - a patched class
    try:
        yield
    finally:
        setattr(modeling_falcon, "FalconLinear", original)  # noqa: B010


def count_linear_4bit(model: nn.Module) -> int:
    if not has_bitsandbytes():
        return 0
    import bitsandbytes as bnb

    return sum(1 for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))


def quantization_config(kind: str, compute_dtype: torch.dtype) -> Any:
    """The QLoRA recipe: NF4, double quantization, bf16 compute (or 8-bit LLM.int8)."""
    from transformers import BitsAndBytesConfig

    if kind == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=["lm_head"],
        )
    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["lm_head"])
    raise ValueError(f"unknown quantization {kind!r}")


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting != "auto":
        return DTYPES[setting]
    return torch.bfloat16 if supports_bf16(device) else torch.float32


def _source_kwargs(source: str, allow_download: bool) -> tuple[str, dict[str, Any]]:
    """Where `from_pretrained` should look, refusing hub access unless it was allowed."""
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        if not has_gguf():
            raise ModelLoadError("loading a .gguf file needs the 'gguf' package (pip install gguf)")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is not a model folder (no config.json)")
        return str(path), {}
    if source.startswith((".", "/", "~")) or path.parent != Path("."):
        if not allow_download or source.startswith((".", "/", "~")):
            raise ModelLoadError(
                f"model not found at {source}; run 'teller fetch-default-model' for the "
                "embedded default, or set TELLER_BASE_MODEL to a model folder"
            )
    return source, {} if allow_download else {"local_files_only": True}


def load_tokenizer(source: str, *, allow_download: bool = False) -> Any:
    from transformers import AutoTokenizer

    where, kwargs = _source_kwargs(source, allow_download)
    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    source: str,
    *,
    device: str = "auto",
    quantization: str = "nf4",
    dtype: str = "auto",
    allow_download: bool = False,
    quantize_on_cpu: bool = False,
) -> LoadedModel:
    """Load a causal LM for serving or training.

    On CUDA with `nf4`/`8bit`, weights are quantized by bitsandbytes and the number of 4-bit
    layers is checked, so a model that silently stayed in bf16 is caught here. On CPU the
    model runs unquantized in float32 (bf16 matmuls are slower than fp32 on most CPUs) unless
    `quantize_on_cpu` asks for bitsandbytes' CPU kernels (tests use it to check the 4-bit path).

    Raises:
        ModelLoadError: the source is missing, hub access is needed but not allowed, or a
            requested quantization could not be applied.
    """
    from transformers import AutoModelForCausalLM

    torch_device = resolve_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    where, kwargs = _source_kwargs(source, allow_download)
    applied = "none"
    if quantization != "none" and (torch_device.type == "cuda" or quantize_on_cpu):
        if not has_bitsandbytes():
            raise ModelLoadError(
                f"TELLER_QUANTIZATION={quantization} needs bitsandbytes; install it or set none"
            )
        kwargs["quantization_config"] = quantization_config(quantization, torch_dtype)
        kwargs["device_map"] = {
            "": (torch_device.index or 0) if torch_device.type == "cuda" else "cpu"
        }
        applied = quantization
    try:
        with falcon_linear_as_plain_linear():
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch_dtype, **kwargs)
        tokenizer = load_tokenizer(source, allow_download=allow_download)
    except OSError as exc:
        raise ModelLoadError(f"could not load model from {source}: {exc}") from exc
    if applied == "none":
        model.to(torch_device)  # type: ignore[arg-type]  # transformers types `to` narrowly
    model.eval()
    linear_4bit = count_linear_4bit(model) if applied != "none" else 0
    if applied == "nf4" and linear_4bit == 0:
        raise ModelLoadError(f"4-bit quantization was asked for but {source} holds no 4-bit layers")
    if applied != "none":
        log.info("loaded %s with %d Linear4bit layers", source, linear_4bit)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=source,
        device=torch_device,
        dtype=torch_dtype,
        quantization=applied,
        linear_4bit=linear_4bit,
    )
