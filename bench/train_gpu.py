"""QLoRA training throughput on the real Falcon-7B architecture: plain recipe vs Teller's.

One GPU call, under 8 minutes on an H100:

    python bench/train_gpu.py                # writes bench/results/train-gpu.json
    python bench/train_gpu.py --smoke        # the whole script on CPU with the tiny Falcon

Weights are random (speed does not depend on their values): Falcon-7B is built from its config
directly in bf16 on the GPU, saved once as safetensors under /tmp (~14 GB; the GPU box has 64 GB
of disk), then loaded 4-bit NF4 through `app.engine.loader.load_base_model`, the same path
serving and `teller train` use. There is no Falcon tokenizer offline, so the project's finance
set is tokenized with the SmolLM2 tokenizer from models/; its ids (< 49152) are taken mod 65024,
which leaves them unchanged, so the token-length distribution is that of the real data.

(a) baseline: transformers Trainer, every example padded to 512, batch 4, no packing, gradient
    checkpointing, paged 8-bit AdamW, bf16 autocast, `--loss-steps` (50) steps in data order.
(b) teller_equal: Teller's step (chunked loss, bf16 frozen weights, no recompute) on exactly
    the baseline's batches, packed: same seed, LoRA init and data order, so the per-step losses
    compare one to one (`loss_equality`: max relative difference over the 50 steps).
(c) teller: packed rows, 16 rows per optimizer step in the micro-batches / checkpointing that
    `training.fast.plan_memory` picks for the whole card (halved on an out-of-memory error).
(d) teller_16gb: the same with the plan for `--budget-gb` 16 (`memory_budget_gb=16`).
`--profile` writes torch.profiler's top kernels of two (c) steps to profile.txt next to --out;
`dequant_paths` times bitsandbytes' Linear4bit against dequantize_4bit + F.linear.

Useful tokens are the non-padding ones. MFU counts 6*N_lora + 4*N_base FLOPs per useful token
(frozen base: forward + input gradient; adapter: forward + both gradients) against a measured
bf16 matmul rate on the same card.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.contract import PromptFormat  # noqa: E402
from app.engine.loader import load_base_model  # noqa: E402
from app.engine.tiny_models import ensure_tiny_model  # noqa: E402
from training.config import OptimSettings  # noqa: E402
from training.data_loading import Record, read_records  # noqa: E402
from training.encoding import IGNORE_INDEX, Example, encode_records  # noqa: E402
from training.fast import (  # noqa: E402
    MemoryPlan,
    fixed_bytes,
    keep_frozen_in,
    plan_memory,
    set_gradient_checkpointing,
)
from training.model_build import (  # noqa: E402
    build_optimizer,
    build_scheduler,
    keep_4bit_weights_trainable_on_cpu,
)
from training.packing import Row, attention_of, batch_rows, pack_rows  # noqa: E402
from training.step import StepContext, train_step  # noqa: E402

FALCON_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
FALCON_VOCAB = 65024
TOKENIZER_DIR = REPO / "models" / "SmolLM2-135M-Instruct"
DATA_FILE = REPO / "training" / "data" / "finance_train.jsonl"
RESULTS = REPO / "bench" / "results" / "train-gpu.json"


def falcon_7b_config() -> Any:
    """tiiuae/falcon-7b's architecture (config.json of the hub repo, written out)."""
    from transformers import FalconConfig

    return FalconConfig(
        vocab_size=FALCON_VOCAB,
        hidden_size=4544,
        num_hidden_layers=32,
        num_attention_heads=71,
        multi_query=True,
        parallel_attn=True,
        new_decoder_architecture=False,
        bias=False,
        alibi=False,
        layer_norm_epsilon=1e-5,
        max_position_embeddings=2048,
        bos_token_id=11,
        eos_token_id=11,
        tie_word_embeddings=True,
    )


def build_checkpoint(smoke: bool, workdir: Path) -> tuple[Path, int]:
    """A random-weight model folder to load, and its parameter count (unquantized)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if smoke:
        folder = ensure_tiny_model("falcon", workdir, TOKENIZER_DIR)
        model = AutoModelForCausalLM.from_pretrained(folder)
        count = sum(p.numel() for p in model.parameters())
        del model
        return folder, count
    # Kept between runs on the same warm GPU box: saving 14 GB is the slowest setup step.
    folder = Path(tempfile.gettempdir()) / "teller-bench-falcon-7b-random"
    count_file = folder / "param_count.txt"
    if (folder / "config.json").exists() and count_file.exists():
        return folder, int(count_file.read_text())
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(falcon_7b_config(), dtype=torch.bfloat16)
    count = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, max_shard_size="5GB")
    AutoTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(folder)
    count_file.write_text(str(count))
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return folder, count


def load_examples(tokenizer: Any, eos_id: int, max_seq_len: int, want: int) -> tuple[list, str]:
    """Finance records in the Alpaca format, repeated until there are `want` examples."""
    if DATA_FILE.exists():
        records, source = read_records(DATA_FILE), f"{DATA_FILE.relative_to(REPO)}"
    else:  # a stand-in with a similar length mix when the generated set is absent
        records = [
            Record(
                f"Compute the ratio for case {i}.",
                "x " * (i % 60),
                "Step. " * (20 + i % 120) + f"Answer: {i}",
            )
            for i in range(400)
        ]
        source = "synthetic length mix (finance_train.jsonl absent)"
    examples, _ = encode_records(
        records,
        tokenizer,
        prompt_format=PromptFormat.ALPACA,
        eos_id=eos_id,
        max_seq_len=max_seq_len,
    )
    examples = [
        Example(
            [t % FALCON_VOCAB for t in e.input_ids],
            [t if t == IGNORE_INDEX else t % FALCON_VOCAB for t in e.labels],
        )
        for e in examples
    ]
    repeats = -(-want // len(examples))
    tokenizer_note = "SmolLM2 tokenizer, ids mod 65024 (a no-op: all ids < 49152)"
    return (examples * repeats)[:want], f"{source}, {tokenizer_note}"


def matmul_tflops(device: torch.device) -> float:
    """Measured dense matmul rate: bf16 8192^3 on CUDA, fp32 512^3 on CPU (smoke)."""
    n, dtype, iters = (
        (8192, torch.bfloat16, 20) if device.type == "cuda" else (512, torch.float32, 5)
    )
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - started) / 1e12


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


def attach_lora(base: Any, rank: int) -> Any:
    from peft import LoraConfig, get_peft_model

    if hasattr(base, "peft_config"):
        del base.peft_config
    torch.manual_seed(0)
    config = LoraConfig(
        r=rank,
        lora_alpha=16,
        lora_dropout=0.1,
        target_modules=FALCON_TARGETS,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config)


def summarize(
    times: list[float],
    useful: list[int],
    losses: list[float],
    warmup: int,
    flops_per_token: float,
    peak_tflops: float,
    device: torch.device,
) -> dict:
    t, u = times[warmup:] or times, useful[warmup:] or useful
    tokens_per_s = sum(u) / sum(t)
    return {
        "steps": len(times),
        "measured_steps": len(t),
        "step_time_s": round(statistics.median(t), 4),
        "useful_tokens_per_step": round(sum(u) / len(u), 1),
        "useful_tokens_per_s": round(tokens_per_s, 1),
        "mfu": round(flops_per_token * tokens_per_s / (peak_tflops * 1e12), 4),
        "peak_memory_gib": round(peak_memory_gib(device), 2),
        "first_losses": [round(x, 4) for x in losses[:5]],
    }


def run_baseline(base: Any, examples: list[Example], args: argparse.Namespace, device, on_step):
    """(a) Trainer with examples padded to max length, batch 4, no packing."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = attach_lora(base, args.rank)
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
        attention_of(model),
        device,
        dtype,
        0.3,
        chunked_loss=True,
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
    model = attach_lora(base, args.rank)
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


def dequant_paths(device) -> dict:
    """bitsandbytes' Linear4bit forward+backward vs dequantize_4bit + F.linear (cuBLAS)."""
    if device.type != "cuda":
        return {}
    import bitsandbytes as bnb
    import bitsandbytes.functional as bf

    out: dict = {}
    for n_in, n_out in ((4544, 4672), (4544, 18176), (18176, 4544)):
        layer = bnb.nn.Linear4bit(
            n_in, n_out, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4"
        )
        layer = layer.to("cuda")
        x = torch.randn(4096, n_in, device="cuda", dtype=torch.bfloat16, requires_grad=True)

        def own(layer: Any = layer, x: torch.Tensor = x) -> None:
            w = bf.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
            torch.nn.functional.linear(x, w.to(torch.bfloat16)).sum().backward()

        def default(layer: Any = layer, x: torch.Tensor = x) -> None:
            layer(x).sum().backward()

        row = {}
        for label, fn in (("bnb_default_ms", default), ("dequant_then_linear_ms", own)):
            for _ in range(3):
                fn()
            sync(device)
            t0 = time.perf_counter()
            for _ in range(10):
                fn()
            sync(device)
            row[label] = round((time.perf_counter() - t0) * 100, 3)
        out[f"{n_in}x{n_out} @4096 tokens fwd+bwd"] = row
    return out


def compare_losses(baseline: list[float], teller: list[float]) -> dict:
    n = min(len(baseline), len(teller))
    rel = [abs(a - b) / abs(a) for a, b in zip(baseline[:n], teller[:n], strict=True)]
    mean_a, mean_b = statistics.fmean(baseline[:n]), statistics.fmean(teller[:n])
    return {
        "steps_compared": n,
        "max_rel_diff": round(max(rel), 5),
        "mean_rel_diff": round(statistics.fmean(rel), 5),
        "mean_loss_baseline": round(mean_a, 4),
        "mean_loss_teller": round(mean_b, 4),
        "rel_diff_of_means": round(abs(mean_a - mean_b) / mean_a, 5),
        "within_1pct": max(rel) <= 0.01,
    }


def print_table(results: dict) -> None:
    keys = [
        "useful_tokens_per_s",
        "step_time_s",
        "useful_tokens_per_step",
        "mfu",
        "peak_memory_gib",
        "micro_batch_rows",
        "gradient_checkpointing",
    ]
    names = ["baseline", "teller_equal", "teller", "teller_16gb"]
    kind = "fp32 (smoke)" if results["smoke"] else "bf16"
    print(f"\n{results['device']}  ({kind} matmul {results['matmul_tflops']:.1f} TFLOP/s)")
    print(f"{'metric':<24}" + "".join(f"{n:>16}" for n in names))
    for key in keys:
        print(f"{key:<24}" + "".join(f"{results[n].get(key)!s:>16}" for n in names))
    base = results["baseline"]["useful_tokens_per_s"]
    print(
        f"{'speedup vs baseline':<24}"
        + "".join(f"{results[n]['useful_tokens_per_s'] / base:>15.2f}x" for n in names)
    )
    print(f"loss equality: {results['loss_equality']}")


def section_of(raw: dict, mem: float, flops: float, peak: float, args, device) -> dict:
    section = summarize(
        raw["times"], raw["useful"], raw["losses"], args.warmup, flops, peak, device
    )
    section.update(peak_memory_gib=round(mem, 2), flops_per_useful_token=flops)
    section.update({k: v for k, v in raw.items() if k not in {"times", "useful", "losses"}})
    section["step_times_s"] = [round(x, 4) for x in raw["times"]]
    section["losses"] = [round(x, 4) for x in raw["losses"]]
    return section


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny Falcon on CPU, seconds")
    parser.add_argument("--steps", type=int, default=0, help="throughput steps (default 16/3)")
    parser.add_argument("--loss-steps", type=int, default=0, help="steps compared (50/3)")
    parser.add_argument("--warmup", type=int, default=-1, help="steps left out of timing")
    parser.add_argument("--seq-len", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=0, help="baseline rows per step")
    parser.add_argument("--rows-per-step", type=int, default=0, help="teller rows per step")
    parser.add_argument("--budget-gb", type=float, default=16.0)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--profile", action="store_true", help="profile.txt next to --out")
    args = parser.parse_args(argv)
    args.steps = args.steps or (3 if args.smoke else 16)
    args.loss_steps = args.loss_steps or (3 if args.smoke else 50)
    args.warmup = args.warmup if args.warmup >= 0 else (1 if args.smoke else 3)
    args.seq_len = args.seq_len or (64 if args.smoke else 512)
    args.batch_size = args.batch_size or (2 if args.smoke else 4)
    args.rows_per_step = args.rows_per_step or (2 if args.smoke else 16)
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA GPU visible; run with --smoke for the CPU check", file=sys.stderr)
        return 2
    started = time.perf_counter()
    out = args.out or (
        RESULTS if not args.smoke else Path(tempfile.gettempdir()) / "train-gpu-smoke.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)

    def on_step(name: str, step: int) -> None:
        if step % 10 == 0 or step <= 2:
            print(f"[{time.perf_counter() - started:7.1f}s] {name} step {step}", flush=True)

    with tempfile.TemporaryDirectory(prefix="teller-bench-") as tmp:
        folder, n_base = build_checkpoint(args.smoke, Path(tmp))
        print(
            f"[{time.perf_counter() - started:7.1f}s] checkpoint ready: {n_base / 1e9:.3f}B params"
        )
        loaded = load_base_model(
            str(folder),
            device="cpu" if args.smoke else "cuda",
            quantization="nf4",
            dtype="float32" if args.smoke else "bfloat16",
            quantize_on_cpu=args.smoke,
        )
        device, dtype = loaded.device, loaded.dtype
        print(
            f"[{time.perf_counter() - started:7.1f}s] loaded 4-bit: {loaded.linear_4bit} Linear4bit"
        )
        if device.type == "cpu":
            keep_4bit_weights_trainable_on_cpu(loaded.model)
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(
            loaded.model,
            use_gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        base.config.use_cache = False
        eos_id = int(base.config.eos_token_id)
        want = max(args.loss_steps * args.batch_size, args.steps * args.rows_per_step * 4)
        examples, data_note = load_examples(loaded.tokenizer, eos_id, args.seq_len, want)
        peak = matmul_tflops(device)
        dequant = dequant_paths(device)

        # (a) the plain recipe on the first loss_steps x batch_size examples, in order.
        keep = args.batch_size * args.loss_steps
        base, baseline, baseline_peak = run_baseline(
            base, examples[:keep], replace_steps(args, args.loss_steps), device, on_step
        )
        # (b) Teller's step on exactly those batches, packed: the loss-equality run.
        keep_frozen_in(base, dtype)
        equal_windows = [
            [pack_rows(examples[k * args.batch_size : (k + 1) * args.batch_size], args.seq_len)]
            for k in range(args.loss_steps)
        ]
        equal, equal_peak = run_teller(
            base, equal_windows, "teller_equal", args, device, dtype, on_step, False
        )
        equal.update(micro_batch_rows="1-2", gradient_checkpointing=False)
        # (c) throughput: the layout planned for the whole card; (d) for a 16 GB budget.
        lora_probe = attach_lora(base, args.rank)
        trainable = sum(p.numel() for p in lora_probe.parameters() if p.requires_grad)
        fixed = fixed_bytes(lora_probe, trainable)
        base = lora_probe.unload()
        card_gib = (
            torch.cuda.get_device_properties(0).total_memory / 2**30 if device.type == "cuda" else 8
        )
        plans = {}
        for label, budget in (("teller", card_gib), ("teller_16gb", args.budget_gb)):
            plans[label] = plan_memory(
                budget,
                model_config=base.config,
                fixed=fixed,
                seq_len=args.seq_len,
                rows_per_step=args.rows_per_step,
                attention=attention_of(base),
            )
        profile_to = out.parent / "profile.txt" if args.profile else None
        fast, fast_peak, plans["teller"] = teller_throughput(
            base, examples, args, device, dtype, on_step, plans["teller"], "teller", profile_to
        )
        small, small_peak, plans["teller_16gb"] = teller_throughput(
            base, examples, args, device, dtype, on_step, plans["teller_16gb"], "teller_16gb"
        )

    sections = {}
    for name, raw, mem in (
        ("baseline", baseline, baseline_peak),
        ("teller_equal", equal, equal_peak),
        ("teller", fast, fast_peak),
        ("teller_16gb", small, small_peak),
    ):
        flops = 6 * raw["trainable_params"] + 4 * n_base
        sections[name] = section_of(raw, mem, flops, peak, args, device)
    sections["baseline"].update(micro_batch_rows=args.batch_size, gradient_checkpointing=True)
    sections["baseline"]["recipe"] = (
        "transformers Trainer, pad to max length, no packing, "
        "gradient checkpointing, paged AdamW 8-bit, bf16 autocast, fp32 frozen norms/head"
    )
    fast_recipe = (
        "packed padding-free rows + block-diagonal mask, train_step with chunked loss over "
        "labelled positions, bf16 frozen weights, paged AdamW 8-bit, bf16 autocast"
    )
    sections["teller_equal"]["recipe"] = (
        f"{fast_recipe}; the baseline's batches in its order, packed, no checkpointing"
    )
    sections["teller"]["recipe"] = f"{fast_recipe}; layout planned for the whole card"
    sections["teller_16gb"]["recipe"] = (
        f"{fast_recipe}; layout planned for memory_budget_gb={args.budget_gb}"
    )
    equality = compare_losses(baseline["losses"], equal["losses"])
    speedup = (
        sections["teller"]["useful_tokens_per_s"] / sections["baseline"]["useful_tokens_per_s"]
    )
    results = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)",
        "smoke": args.smoke,
        "model": "tiny random falcon" if args.smoke else "falcon-7b architecture, random weights",
        "base_params": n_base,
        "linear_4bit": loaded.linear_4bit,
        "quantization": "nf4 + double quant, bf16 compute" if not args.smoke else "nf4 (CPU)",
        "lora": {"r": args.rank, "alpha": 16, "dropout": 0.1, "target_modules": FALCON_TARGETS},
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "teller_rows_per_step": args.rows_per_step,
        "data": data_note,
        "matmul_tflops": round(peak, 2),
        "mfu_formula": "(6*N_lora + 4*N_base) * useful_tokens_per_s / measured matmul FLOP/s",
        "torch": torch.__version__,
        "wall_s": round(time.perf_counter() - started, 1),
        "speedup_useful_tokens_per_s": round(speedup, 2),
        "speedup_16gb": round(
            sections["teller_16gb"]["useful_tokens_per_s"]
            / sections["baseline"]["useful_tokens_per_s"],
            2,
        ),
        "loss_equality": equality,
        "dequant_paths": dequant,
        **sections,
    }
    results["plans"] = {
        k: {f: getattr(v, f) for f in v.__dataclass_fields__} for k, v in plans.items()
    }
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print_table(results)
    print(f"\nwrote {out} in {results['wall_s']} s")
    return 0


def replace_steps(args: argparse.Namespace, steps: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "steps": steps})


if __name__ == "__main__":
    sys.exit(main())
