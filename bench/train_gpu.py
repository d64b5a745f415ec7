"""QLoRA training throughput on the real Falcon-7B (or Llama-3.1-8B) architecture: plain
recipe vs Teller's.

One GPU call, under 8 minutes on an H100:

    python bench/train_gpu.py                # writes bench/results/train-gpu.json
    python bench/train_gpu.py --model llama  # Llama-3.1-8B: bench/results/train-gpu-llama.json
    python bench/train_gpu.py --smoke        # the whole script on CPU with the tiny Falcon
    python bench/train_gpu.py --smoke --model llama   # ... with a tiny Llama-3.1 block

Weights are random (speed does not depend on their values): Falcon-7B is built from its config
directly in bf16 on the GPU, saved once as safetensors under /tmp (~14 GB; the GPU box has 64 GB
of disk), then loaded 4-bit NF4 through `app.engine.loader.load_base_model`, the same path
serving and `teller train` use. There is no Falcon tokenizer offline, so the project's finance
set is tokenized with the SmolLM2 tokenizer from models/; its ids (< 49152) are taken mod 65024,
which leaves them unchanged, so the token-length distribution is that of the real data.
`--model llama` builds meta-llama/Llama-3.1-8B's architecture (GQA 32/8 heads, llama3 RoPE
scaling, untied 128,256-token head; ~16 GB in bf16) the same way, LoRA on all seven projections;
its MLPs run through the fused SwiGLU function (training/fast/fused_swiglu.py).

(a) baseline: transformers Trainer, every example padded to 512, batch 4, no packing, gradient
    checkpointing, paged 8-bit AdamW, bf16 autocast, `--loss-steps` (50) steps in data order.
(b) teller_equal: Teller's step (chunked loss, bf16 frozen weights, no recompute) on exactly
    the baseline's batches, packed: same seed, LoRA init and data order, so the per-step losses
    compare one to one (`loss_equality`: max relative difference over the 50 steps).
(c) teller: packed rows, 16 rows per optimizer step in the micro-batches / checkpointing that
    `training.fast.memory_plan.plan_memory` picks for the whole card (halved on an
    out-of-memory error).
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
from bench.train_gpu_recipes import (  # noqa: E402
    attach_lora,
    run_baseline,
    run_teller,
    targets_of,
    teller_attention,
    teller_throughput,
)
from bench.train_gpu_report import (  # noqa: E402
    attention_check,
    compare_losses,
    dequant_paths,
    matmul_tflops,
    print_table,
    section_of,
)
from training.data.encoding import IGNORE_INDEX, Example, encode_records  # noqa: E402
from training.data.loading import Record, read_records  # noqa: E402
from training.data.packing import pack_rows  # noqa: E402
from training.fast.memory_plan import fixed_bytes, plan_memory  # noqa: E402
from training.fast.precision import keep_frozen_in, norm_outputs_in  # noqa: E402
from training.fast.varlen_attention import VARLEN  # noqa: E402
from training.model_build import keep_4bit_weights_trainable_on_cpu  # noqa: E402

FALCON_VOCAB = 65024
TOKENIZER_DIR = REPO / "models" / "SmolLM2-135M-Instruct"
DATA_FILE = REPO / "training" / "sample_data" / "finance_train.jsonl"
RESULTS = REPO / "bench" / "results" / "train-gpu.json"
LLAMA_VOCAB = 128256
VOCAB = {"falcon": FALCON_VOCAB, "llama": LLAMA_VOCAB}
RESULTS_BY_MODEL = {"falcon": RESULTS, "llama": REPO / "bench" / "results" / "train-gpu-llama.json"}


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


def llama_31_8b_config() -> Any:
    """meta-llama/Llama-3.1-8B's architecture (config.json of the hub repo, written out)."""
    from transformers import LlamaConfig

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    return LlamaConfig(
        vocab_size=LLAMA_VOCAB,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        hidden_act="silu",
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters=rope,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        bos_token_id=128000,
        eos_token_id=128001,
    )


def build_checkpoint(smoke: bool, workdir: Path, model: str = "falcon") -> tuple[Path, int]:
    """A random-weight model folder to load, and its parameter count (unquantized)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if smoke:
        folder = ensure_tiny_model(
            "falcon" if model == "falcon" else "llama3", workdir, TOKENIZER_DIR
        )
        model = AutoModelForCausalLM.from_pretrained(folder)
        count = sum(p.numel() for p in model.parameters())
        del model
        return folder, count
    # Kept between runs on the same warm GPU box: saving 14 GB is the slowest setup step.
    name = "falcon-7b" if model == "falcon" else "llama-3.1-8b"
    folder = Path(tempfile.gettempdir()) / f"teller-bench-{name}-random"
    count_file = folder / "param_count.txt"
    if (folder / "config.json").exists() and count_file.exists():
        return folder, int(count_file.read_text())
    torch.manual_seed(0)
    with torch.device("cuda"):
        config = falcon_7b_config() if model == "falcon" else llama_31_8b_config()
        built = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    count = sum(p.numel() for p in built.parameters())
    built.save_pretrained(folder, max_shard_size="5GB")
    AutoTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(folder)
    count_file.write_text(str(count))
    del built
    gc.collect()
    torch.cuda.empty_cache()
    return folder, count


def load_examples(
    tokenizer: Any, eos_id: int, max_seq_len: int, want: int, vocab: int = FALCON_VOCAB
) -> tuple[list, str]:
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
            [t % vocab for t in e.input_ids],
            [t if t == IGNORE_INDEX else t % vocab for t in e.labels],
        )
        for e in examples
    ]
    repeats = -(-want // len(examples))
    tokenizer_note = f"SmolLM2 tokenizer, ids mod {vocab} (a no-op: all ids < 49152)"
    return (examples * repeats)[:want], f"{source}, {tokenizer_note}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU, seconds")
    parser.add_argument(
        "--model",
        choices=("falcon", "llama"),
        default="falcon",
        help="falcon: Falcon-7B; llama: the Llama-3.1-8B architecture",
    )
    parser.add_argument("--steps", type=int, default=0, help="throughput steps (default 16/3)")
    parser.add_argument("--loss-steps", type=int, default=0, help="steps compared (50/3)")
    parser.add_argument("--warmup", type=int, default=-1, help="steps left out of timing")
    parser.add_argument("--seq-len", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=0, help="baseline rows per step")
    parser.add_argument("--rows-per-step", type=int, default=0, help="teller rows per step")
    parser.add_argument("--budget-gb", type=float, default=16.0)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.1, help="LoRA dropout")
    parser.add_argument(
        "--bf16-activations", action="store_true", help="Teller runs with bf16_activations on"
    )
    parser.add_argument(
        "--no-fused-mlp", action="store_true", help="Teller runs PEFT's MLP (fused_mlp=false)"
    )
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
        RESULTS_BY_MODEL[args.model]
        if not args.smoke
        else Path(tempfile.gettempdir()) / f"train-gpu-smoke-{args.model}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)

    def on_step(name: str, step: int) -> None:
        if step % 10 == 0 or step <= 2:
            print(f"[{time.perf_counter() - started:7.1f}s] {name} step {step}", flush=True)

    with tempfile.TemporaryDirectory(prefix="teller-bench-") as tmp:
        folder, n_base = build_checkpoint(args.smoke, Path(tmp), args.model)
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
        examples, data_note = load_examples(
            loaded.tokenizer, eos_id, args.seq_len, want, VOCAB[args.model]
        )
        peak = matmul_tflops(device)
        dequant = dequant_paths(device)
        attention = {**attention_check(device), "teller": teller_attention(base, device)}

        # (a) the plain recipe on the first loss_steps x batch_size examples, in order.
        keep = args.batch_size * args.loss_steps
        base, baseline, baseline_peak = run_baseline(
            base, examples[:keep], replace_steps(args, args.loss_steps), device, on_step
        )
        # The same without LoRA dropout: its masks are drawn per dtype (a bf16 input gets
        # other masks than an fp32 one from the same seed), so only this pair compares the
        # arithmetic alone.
        no_dropout = argparse.Namespace(**{**vars(args), "steps": args.loss_steps, "dropout": 0.0})
        base, baseline_plain, _ = run_baseline(base, examples[:keep], no_dropout, device, on_step)
        # (b) Teller's step on exactly those batches, packed: the loss-equality run.
        keep_frozen_in(base, dtype)
        if args.bf16_activations:
            norm_outputs_in(base, dtype)
        equal_windows = [
            [pack_rows(examples[k * args.batch_size : (k + 1) * args.batch_size], args.seq_len)]
            for k in range(args.loss_steps)
        ]
        equal, equal_peak = run_teller(
            base, equal_windows, "teller_equal", args, device, dtype, on_step, False
        )
        equal.update(micro_batch_rows="1-2", gradient_checkpointing=False)
        equal_plain, _ = run_teller(
            base, equal_windows, "equal_no_dropout", no_dropout, device, dtype, on_step, False
        )
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
                attention=attention["teller"],
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
    packed_how = (
        "flash varlen attention over the packed examples"
        if attention["teller"] == VARLEN
        else "block-diagonal mask"
    )
    fast_recipe = (
        f"packed padding-free rows + {packed_how}, train_step with chunked loss over "
        "labelled positions, bf16 frozen weights, paged AdamW 8-bit, bf16 autocast"
        + ("" if args.no_fused_mlp else f"; 4-bit LoRA MLPs fused ({FUSED_BY_MODEL[args.model]})")
        + ("; bf16 activations after every layer norm" if args.bf16_activations else "")
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
        "model": MODEL_NOTES[args.model][args.smoke],
        "base_params": n_base,
        "linear_4bit": loaded.linear_4bit,
        "quantization": "nf4 + double quant, bf16 compute" if not args.smoke else "nf4 (CPU)",
        "lora": {
            "r": args.rank,
            "alpha": 16,
            "dropout": args.dropout,
            "target_modules": targets_of(base),
        },
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
        "bf16_activations": args.bf16_activations,
        "fused_mlp": not args.no_fused_mlp,
        "loss_equality": equality,
        "loss_equality_no_dropout": compare_losses(baseline_plain["losses"], equal_plain["losses"]),
        "dequant_paths": dequant,
        "attention": attention,
        **sections,
    }
    results["plans"] = {
        k: {f: getattr(v, f) for f in v.__dataclass_fields__} for k, v in plans.items()
    }
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print_table(results)
    print(f"\nwrote {out} in {results['wall_s']} s")
    return 0


MODEL_NOTES = {
    "falcon": {True: "tiny random falcon", False: "falcon-7b architecture, random weights"},
    "llama": {
        True: "tiny random llama (Llama 3.1 block: GQA, llama3 RoPE scaling, untied head)",
        False: "llama-3.1-8b architecture, random weights",
    },
}
FUSED_BY_MODEL = {
    "falcon": "training/fast/fused_mlp.py",
    "llama": "SwiGLU, training/fast/fused_swiglu.py",
}


def replace_steps(args: argparse.Namespace, steps: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "steps": steps})


if __name__ == "__main__":
    sys.exit(main())
