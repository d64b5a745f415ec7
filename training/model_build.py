"""The QLoRA model: base loaded through `app.engine.loader`, prepared for k-bit training,
wrapped in a LoRA adapter; plus the optimizer that fits the device.

Loading goes through the same `load_base_model` the server uses, so the Falcon 4-bit fix and
the Linear4bit count apply to training too.
"""

from __future__ import annotations

import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.config import DEFAULT_MODEL_DIRNAME
from app.engine.capabilities import has_bitsandbytes, has_cuda
from app.engine.loader import LoadedModel, ModelLoadError, load_base_model
from app.engine.tiny_models import ensure_tiny_model
from training.config import OptimizerName, OptimSettings, Quantization, ScheduleName, TrainConfig
from training.fast.precision import keep_frozen_in, norm_outputs_in
from training.targets import target_modules_for

SCHEDULES: dict[ScheduleName, str] = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant_with_warmup",
}
"""`optim.scheduler` to transformers' `get_scheduler` name (all warm up first)."""
_TINY = re.compile(r"tiny-random-(llama|falcon)")


class SetupError(RuntimeError):
    """The run cannot start on this machine or with this config; one line says why."""


@dataclass
class TrainableModel:
    """The adapter-wrapped model and what the run reports about it."""

    model: Any
    tokenizer: Any
    loaded: LoadedModel
    target_modules: list[str]
    trainable_params: int
    total_params: int


def models_dir_of(config: TrainConfig) -> Path:
    return Path(config.models_dir or os.environ.get("TELLER_MODELS_DIR", "models")).expanduser()


def resolve_base_model(config: TrainConfig) -> str:
    """Where to load the configured base model from (the manifest keeps the string as written).

    `tiny-random-llama` / `tiny-random-falcon` are built on demand under the models dir.

    Raises:
        SetupError: no base model configured, or the tiny model lacks its tokenizer source.
    """
    name = config.base_model.strip()
    if not name:
        raise SetupError("no base model: set base_model (e.g. --set base_model=models/MyModel)")
    models_dir = models_dir_of(config)
    tiny = _TINY.fullmatch(name)
    if tiny:
        tokenizer_source = models_dir / DEFAULT_MODEL_DIRNAME
        if not (tokenizer_source / "config.json").exists():
            raise SetupError(
                f"{name} borrows the tokenizer of {tokenizer_source}, which is missing; "
                "run 'teller fetch-default-model' first"
            )
        return str(ensure_tiny_model(tiny.group(1), models_dir, tokenizer_source))  # type: ignore[arg-type]
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if (models_dir / name).exists():
        return str(models_dir / name)
    return name


def check_quantization_possible(config: TrainConfig) -> None:
    """Refuse a 4-bit/8-bit preset on a machine without CUDA, in one line, before any loading.

    Raises:
        SetupError: quantization asked for without CUDA (and without quantize_on_cpu), or
            without bitsandbytes.
    """
    if config.quantization not in typing.get_args(Quantization):
        allowed = ", ".join(typing.get_args(Quantization))
        raise SetupError(f"quantization must be one of {allowed}, got {config.quantization!r}")
    if config.quantization == "none":
        return
    on_cuda = has_cuda() and config.device != "cpu"
    if not on_cuda and not config.quantize_on_cpu:
        raise SetupError(
            f"quantization={config.quantization} needs a CUDA GPU and none is visible; "
            "use a CPU preset (smollm2-cpu) or --set quantization=none"
        )
    if not has_bitsandbytes():
        raise SetupError(f"quantization={config.quantization} needs bitsandbytes installed")


def keep_4bit_weights_trainable_on_cpu(model: torch.nn.Module) -> int:
    """Stop bitsandbytes repacking 4-bit weights for CPU inference during evaluation.

    bitsandbytes 0.50 converts a `Linear4bit` weight to an AVX512-BF16 layout the first time it
    runs in eval mode without grad, and never converts back; later training forwards then go
    through `gemv_4bit`, which has no autograd, so gradients to earlier layers' adapters come
    out silently wrong. Held-out evaluation during training would trigger exactly that.
    Returns how many layers were switched.
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            layer: Any = module  # a bitsandbytes Linear4bit
            layer.support_avx512bf16_for_cpu = False
            count += 1
    return count


def build_trainable_model(config: TrainConfig) -> TrainableModel:
    """Base model (quantized if asked) + LoRA, with only the adapter trainable.

    Raises:
        SetupError: see `check_quantization_possible`, or the model could not be loaded.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    check_quantization_possible(config)
    source = resolve_base_model(config)
    try:
        loaded = load_base_model(
            source,
            device=config.device,
            quantization=config.quantization,
            dtype=config.dtype,
            allow_download=config.data.allow_hub_downloads,
            quantize_on_cpu=config.quantize_on_cpu,
        )
    except (ModelLoadError, RuntimeError) as exc:
        raise SetupError(str(exc)) from None
    model = loaded.model
    if loaded.quantization != "none" and loaded.device.type == "cpu":
        keep_4bit_weights_trainable_on_cpu(model)
    checkpoint_kwargs = {"use_reentrant": False}
    if loaded.quantization != "none":
        # Freezes the base, upcasts norms/embeddings to fp32 for stable training, and turns
        # on gradient checkpointing in one step (the QLoRA recipe).
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpoint_kwargs,
        )
        keep_frozen_in(model, loaded.dtype)  # bf16 frozen norms/embeddings/head on a GPU
        if config.bf16_activations and loaded.device.type == "cuda":
            norm_outputs_in(model, loaded.dtype)
    else:
        for param in model.parameters():
            param.requires_grad_(False)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)
    model.config.use_cache = False
    targets = target_modules_for(model, config.lora.target_modules)
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=targets,
        bias=config.lora.bias,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(config.seed)  # LoRA A init is random: same seed, same adapter
    model = get_peft_model(model, lora)
    trainable, total = model.get_nb_trainable_parameters()
    return TrainableModel(model, loaded.tokenizer, loaded, targets, int(trainable), int(total))


def build_optimizer(
    params: list[torch.nn.Parameter], optim: OptimSettings, device: torch.device
) -> torch.optim.Optimizer:
    """Paged 8-bit AdamW on CUDA (QLoRA's memory-spike guard), torch AdamW elsewhere.

    Raises:
        SetupError: an unknown optimizer, or the paged one without CUDA/bitsandbytes.
    """
    choice = optim.optimizer
    if choice == "auto":
        choice = "paged_adamw_8bit" if device.type == "cuda" and has_bitsandbytes() else "adamw"
    betas = (float(optim.betas[0]), float(optim.betas[1]))
    if choice == "paged_adamw_8bit":
        if device.type != "cuda" or not has_bitsandbytes():
            raise SetupError("optim.optimizer=paged_adamw_8bit needs CUDA and bitsandbytes")
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(
            params, lr=optim.lr, betas=betas, weight_decay=optim.weight_decay
        )
    if choice == "adamw":
        return torch.optim.AdamW(params, lr=optim.lr, betas=betas, weight_decay=optim.weight_decay)
    allowed = ", ".join(typing.get_args(OptimizerName))
    raise SetupError(f"optim.optimizer must be one of {allowed}, got {choice!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimSettings, total_steps: int
) -> Any:
    """Warmup then cosine/linear decay (or constant), stepped once per optimizer step.

    Raises:
        SetupError: an unknown schedule name.
    """
    from transformers import get_scheduler

    if optim.scheduler not in SCHEDULES:
        allowed = ", ".join(typing.get_args(ScheduleName))
        raise SetupError(f"optim.scheduler must be one of {allowed}, got {optim.scheduler!r}")
    warmup = int(round(optim.warmup_ratio * total_steps))
    return get_scheduler(
        SCHEDULES[optim.scheduler],
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
    )
