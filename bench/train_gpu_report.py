"""The figures of bench/train_gpu.py: the card's reference rates and the report.

Split from train_gpu.py so the entry point keeps only setup and the run sequence.
`matmul_tflops` is the MFU denominator, measured on the same card so MFU does not hang on a
datasheet peak; `dequant_paths` times bitsandbytes' two 4-bit paths; `section_of` turns a
runner's raw step times, token counts and losses into one JSON section; `compare_losses` is
the loss-equality check and `print_table` the console summary.
Not a script: imported by bench/train_gpu.py.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from bench.train_gpu_recipes import peak_memory_gib, sync


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


def attention_check(device: torch.device, heads: int = 71, dim: int = 64) -> dict:
    """Packed attention as training runs it (flash varlen on a GPU) against the per-example
    SDPA reference in float32, on a random packed batch of Falcon-7B's head shape."""
    from training.fast import varlen_attention as va

    generator = torch.Generator().manual_seed(0)
    lengths = [[200, 37, 180, 95], [512], [64, 448]]
    position_ids = torch.cat([torch.arange(n) for row in lengths for n in row]).view(3, 512)
    q = torch.randn(3, heads, 512, dim, generator=generator)
    k, v = (torch.randn(3, 1, 512, dim, generator=generator) for _ in range(2))
    flat = [t.transpose(1, 2).reshape(3 * 512, -1, dim).double() for t in (q, k, v)]
    reference = va._per_example(*flat, va.boundaries(position_ids), None).view(3, 512, heads, dim)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        moved = [t.to(device) for t in (q, k, v, position_ids)]
        got = va.varlen_attention(*moved).double().cpu()
    va._cached = None
    error = float((got - reference).norm() / reference.norm())
    return {"kernel": va.kernel_available(device), "rel_l2_vs_fp64": round(error, 5)}


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


def section_of(raw: dict, mem: float, flops: float, peak: float, args, device) -> dict:
    section = summarize(
        raw["times"], raw["useful"], raw["losses"], args.warmup, flops, peak, device
    )
    section.update(peak_memory_gib=round(mem, 2), flops_per_useful_token=flops)
    section.update({k: v for k, v in raw.items() if k not in {"times", "useful", "losses"}})
    section["step_times_s"] = [round(x, 4) for x in raw["times"]]
    section["losses"] = [round(x, 4) for x in raw["losses"]]
    return section


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
    if "loss_equality_no_dropout" in results:
        print(f"loss equality without LoRA dropout: {results['loss_equality_no_dropout']}")
