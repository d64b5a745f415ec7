"""The recipes bench/train_gpu.py times: the plain Trainer baseline and Teller's own step.

Split from train_gpu.py so the entry point keeps only setup and the run sequence; each runner
attaches a fresh LoRA (same seed, so every recipe starts from the same adapter), times each
optimizer step between device synchronizations and unloads the adapter again, handing back
the base model for the next recipe. Not a script: imported by bench/train_gpu.py.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from training.config import OptimSettings
from training.data.encoding import IGNORE_INDEX, Example
from training.data.packing import Row, attention_of, batch_rows, pack_rows
from training.fast import varlen_attention
from training.fast.memory_plan import MemoryPlan, set_gradient_checkpointing
from training.model_build import build_optimizer, build_scheduler
from training.step import StepContext, train_step
from training.targets import TARGETS_BY_MODEL_TYPE

FALCON_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]


def targets_of(base: Any) -> list[str]:
    """LoRA on every linear layer of the blocks, by family (training/targets.py's table)."""
    return list(TARGETS_BY_MODEL_TYPE[base.config.model_type])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0


def attach_lora(base: Any, rank: int, dropout: float = 0.1) -> Any:
    from peft import LoraConfig, get_peft_model

    if hasattr(base, "peft_config"):
        del base.peft_config
    torch.manual_seed(0)
    config = LoraConfig(
        r=rank,
        lora_alpha=16,
        lora_dropout=dropout,
        target_modules=targets_of(base),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config)


def run_baseline(base: Any, examples: list[Example], args: argparse.Namespace, device, on_step):
    """(a) Trainer with examples padded to max length, batch 4, no packing."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = attach_lora(base, args.rank, args.dropout)
    pad = args.seq_len
    dataset = [
        {
            "input_ids": torch.tensor(e.input_ids + [0] * (pad - len(e))),
            "labels": torch.tensor(e.labels + [IGNORE_INDEX] * (pad - len(e))),
            "attention_mask": torch.tensor([1] * len(e) + [0] * (pad - len(e))),
        }
        for e in examples[: args.steps * args.batch_size]
    ]
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            sync(device)
            self.started = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            sync(device)
            times.append(time.perf_counter() - self.started)
            on_step("baseline", len(times))

    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="teller-bench-"),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_steps=args.steps,
        learning_rate=2e-4,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=0.3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=device.type == "cuda",
        use_cpu=device.type != "cuda",
        optim="paged_adamw_8bit" if device.type == "cuda" else "adamw_torch",
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        train_sampling_strategy="sequential",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model, args=training_args, train_dataset=dataset, callbacks=[StepTimer()]
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    reset_memory(device)
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    useful = [
        sum(len(e) for e in examples[k * args.batch_size : (k + 1) * args.batch_size])
        for k in range(len(times))
    ]
    padded = args.batch_size * args.seq_len
    result = {
        "times": times,
        "useful": useful,
        "losses": losses,
        "trainable_params": trainable,
        "padded_tokens_per_step": padded,
    }
    peak = peak_memory_gib(device)
    del trainer
    base = model.unload()
    reset_memory(device)
    return base, result, peak


def teller_attention(model: Any, device) -> str:
    """What Teller's trainer runs: flash attention over packed examples where the kernel
    runs (training/fast/varlen_attention.py), else SDPA with the block-diagonal mask."""
    return varlen_attention.choose(model, device) or attention_of(model)


def teller_context(model: Any, args: argparse.Namespace, device, dtype, steps: int):
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = OptimSettings(optimizer="auto", lr=2e-4, scheduler="constant", warmup_ratio=0.0)
    optimizer = build_optimizer(trainable, optim, device)
    return StepContext(
        model,
        optimizer,
        build_scheduler(optimizer, optim, steps),
        trainable,
        0,
        teller_attention(model, device),
        device,
        dtype,
        0.3,
        chunked_loss=True,
        fused_mlp=not args.no_fused_mlp,
    )


def run_teller(
    base: Any,
    windows: list[list[list[Row]]],
    name: str,
    args: argparse.Namespace,
    device,
    dtype,
    on_step,
    checkpointing: bool,
    profile_to: Path | None = None,
) -> tuple[dict, float]:
    """Teller's step (chunked loss, bf16 frozen weights) over `windows`, one per step."""
    model = attach_lora(base, args.rank, args.dropout)
    model.train()
    set_gradient_checkpointing(model, checkpointing)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    context = teller_context(model, args, device, dtype, len(windows))
    times, useful, losses = [], [], []
    reset_memory(device)
    try:
        for window in windows:
            sync(device)
            started = time.perf_counter()
            loss, tokens = train_step(context, window)
            sync(device)
            times.append(time.perf_counter() - started)
            useful.append(tokens)
            losses.append(loss)
            on_step(name, len(times))
        peak = peak_memory_gib(device)
        if profile_to is not None:
            profile_steps(context, windows[:2], device, profile_to)
    finally:
        del context
        model.unload()
        reset_memory(device)
    result = {
        "times": times,
        "useful": useful,
        "losses": losses,
        "trainable_params": trainable,
        "gradient_checkpointing": checkpointing,
    }
    return result, peak


def profile_steps(context: StepContext, windows: list, device, out: Path) -> None:
    """torch.profiler over a couple of steps: the top kernels by device time, as text."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for window in windows:
            train_step(context, window)
        sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    out.write_text(prof.key_averages().table(sort_by=key, row_limit=40), encoding="utf-8")


def teller_throughput(
    base, examples, args, device, dtype, on_step, plan: MemoryPlan, name: str, profile_to=None
) -> tuple[dict, float, MemoryPlan]:
    """Packed rows, `rows_per_step` rows per optimizer step in the plan's micro-batches;
    on an out-of-memory error the micro-batch halves (the estimate was short), reported."""
    rows = pack_rows(examples, args.seq_len)
    while True:
        micro = batch_rows(rows, plan.micro_batch_size, seed=0)
        micro = [m for m in micro if len(m) == plan.micro_batch_size]
        need = args.steps * plan.grad_accum
        micro = (micro * (-(-need // max(1, len(micro)))))[:need]
        windows = [micro[k : k + plan.grad_accum] for k in range(0, need, plan.grad_accum)]
        try:
            raw, mem = run_teller(
                base,
                windows,
                name,
                args,
                device,
                dtype,
                on_step,
                plan.gradient_checkpointing,
                profile_to,
            )
        except torch.OutOfMemoryError:
            if plan.micro_batch_size == 1:
                raise
            plan = MemoryPlan(
                plan.micro_batch_size // 2, plan.grad_accum * 2, plan.gradient_checkpointing, 0.0
            )
            print(f"{name}: out of memory, retrying with {plan}", flush=True)
            reset_memory(device)
            continue
        raw.update(
            micro_batch_rows=plan.micro_batch_size,
            grad_accum=plan.grad_accum,
            rows_per_step=plan.micro_batch_size * plan.grad_accum,
            plan_estimated_gib=plan.estimated_gib,
        )
        return raw, mem, plan
