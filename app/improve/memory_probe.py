"""`python -m app.improve.memory_probe PRESET [KEY=VALUE ...]`: training's memory plan for a
job, and the free memory of the GPU it would train on, printed as JSON.

Runs in a subprocess of the web server (like `records_check`): the app never imports
training code at run time. The plan is training's own (`training.fast.memory_plan`: the
activation model and the fixed part the recipe uses), computed from the base model's config
on PyTorch's meta device, so no weights are read: seconds for any model size. The free memory
is `torch.cuda.mem_get_info()` as this process sees it, its own CUDA context included (a few
hundred MiB: the check errs on the safe side).

Exit 2 with one line on stderr when the job's settings are wrong (an unknown preset or key,
no base model, a budget too small for one row): the job would fail the same way.
"""

from __future__ import annotations

import json
import sys
from typing import Any

GIB = 2**30
QUANTIZED_BYTES = {"nf4": 0.5 + 0.127 / 8, "8bit": 1.0}
"""Bytes per weight of a quantized linear layer (NF4: 4 bits plus double-quantized scales)."""
WORKSPACE = GIB
"""Training's fixed workspace allowance (`training.fast.memory_plan.fixed_bytes`)."""


def _model(config: Any) -> tuple[Any, Any]:
    """The base model's config and an empty (meta-device) model built from it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from training.model_build import resolve_base_model

    source = resolve_base_model(config)
    try:
        model_config = AutoConfig.from_pretrained(
            source, local_files_only=not config.data.allow_hub_downloads
        )
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the config of base model {source}: {exc}") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return model_config, model


def _fixed_bytes(config: Any, model: Any) -> float:
    """Weights as training stores them, the LoRA adapter (fp32) with its gradients and two
    optimizer states, and the workspace: what `fixed_bytes` counts on the loaded model."""
    from torch import nn

    from training.targets import target_modules_for

    targets = set(target_modules_for(model, list(config.lora.target_modules)))
    dtype_bytes = 4 if config.dtype == "float32" else 2  # `auto` is bf16 on a GPU
    quantized = QUANTIZED_BYTES.get(config.quantization)
    stored, trainable = 0.0, 0
    counted: set[int] = set()
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or "lm_head" in name:
            continue
        if quantized is not None:
            stored += module.weight.numel() * quantized
            counted.add(id(module.weight))
        if name.rsplit(".", 1)[-1] in targets:
            trainable += config.lora.r * (module.in_features + module.out_features)
    for parameter in model.parameters():
        if id(parameter) not in counted:
            stored += parameter.numel() * dtype_bytes
    return stored + trainable * (4 + 4 + 8) + WORKSPACE


def plan_for(config: Any) -> dict[str, Any]:
    """The job's layout (as configured, or as `memory_budget_gb` would choose it), its
    expected peak, and the peaks of smaller layouts (`app.improve.memory.MemoryPlanReport`).

    Raises:
        ValueError: the base model's config cannot be read, or the budget is too small.
    """
    import torch

    from training.data.packing import attention_of
    from training.fast import varlen_attention
    from training.fast.memory_plan import activation_bytes_per_token, plan_memory

    model_config, model = _model(config)
    fixed = _fixed_bytes(config, model)
    try:
        attention = varlen_attention.choose(model, torch.device("cuda"))
    except Exception:  # noqa: BLE001 - no kernel here: the masked form, which needs more
        attention = None
    attention = attention or attention_of(model)
    micro, accum = config.micro_batch_size, config.grad_accum
    seq, checkpointing = config.data.max_seq_len, config.gradient_checkpointing
    if config.memory_budget_gb > 0:
        chosen = plan_memory(
            config.memory_budget_gb,
            model_config=model_config,
            fixed=fixed,
            seq_len=seq,
            rows_per_step=micro * accum,
            attention=attention,
        )
        micro, accum = chosen.micro_batch_size, chosen.grad_accum
        checkpointing = chosen.gradient_checkpointing

    def need(micro_batch: int, recompute: bool, rows: int) -> float:
        per_token = activation_bytes_per_token(model_config, recompute, rows, attention)
        return fixed + per_token * micro_batch * rows

    options: list[tuple[str, float]] = []
    if not checkpointing:
        options.append(("gradient_checkpointing=true", need(micro, True, seq)))
    if seq > 128:
        options.append((f"data.max_seq_len={seq // 2}", need(micro, checkpointing, seq // 2)))
    if micro > 1:
        rows_per_step = f"micro_batch_size=1 grad_accum={micro * accum}"
        options.append((rows_per_step, need(1, checkpointing, seq)))
        if not checkpointing:
            both = f"{rows_per_step} gradient_checkpointing=true"
            options.append((both, need(1, True, seq)))
    return {
        "base_model": config.base_model,
        "micro_batch_size": micro,
        "grad_accum": accum,
        "max_seq_len": seq,
        "gradient_checkpointing": checkpointing,
        "quantization": config.quantization,
        "need_bytes": need(micro, checkpointing, seq),
        "fixed_bytes": fixed,
        "options": options,
        "budget_gb": config.memory_budget_gb,
    }


def gpu_memory() -> tuple[int, int] | None:
    """(free, total) bytes of the GPU training would use; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return int(free), int(total)


def main(argv: list[str]) -> int:
    from training.config_io import ConfigError, load_config
    from training.model_build import SetupError

    if not argv:
        sys.stderr.write("usage: python -m app.improve.memory_probe PRESET [KEY=VALUE ...]\n")
        return 2
    try:
        config = load_config(argv[0], argv[1:])
        plan = plan_for(config)
    except (ConfigError, SetupError, ValueError) as exc:
        sys.stderr.write(f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0]}\n")
        return 2
    gpu = gpu_memory()
    result = {
        "device": config.device,
        "quantization": config.quantization,
        "cuda": gpu is not None,
        "free_bytes": gpu[0] if gpu else None,
        "total_bytes": gpu[1] if gpu else None,
        "plan": plan,
    }
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
