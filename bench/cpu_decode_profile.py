"""Where a decode step of the lean CPU path goes, and what weight-only int8/int4 would change.

    .venv/bin/python bench/cpu_decode_profile.py [--steps 64] [--out FILE]

SmolLM2-135M-Instruct on `FastLlama` (app/engine/models/llama_cpu.py) in bf16 and float32:
wall time per decode step after a 45-token prompt; torch.profiler's self time per op over the
same steps, the matmuls grouped by weight shape with the bytes each reads and the bandwidth
that implies; each weight shape timed alone as a one-row matmul in float32, bf16 and torch's
weight-only int8 (`_weight_int8pack_mm`) and int4 (`_weight_int4pack_mm_for_cpu`, groups of
32, the granularity of llama.cpp's Q4_1) kernels, and the step those would add up to; and a
plain memory read for the box's bandwidth; llama.cpp's decode step (llama-bench, from the
build `bench/llama_cpp_ref.py` caches) before and after, and the bf16 step with its matmuls
swapped for each format's, as a share of llama.cpp's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.engine.loader import load_base_model  # noqa: E402
from app.engine.models.llama_cpu import PROJECTIONS, FastLlama  # noqa: E402
from bench import llama_cpp_ref  # noqa: E402

PROMPT_TOKENS = 45


def step_time(fast: FastLlama, steps: int) -> float:
    """Median wall seconds of one decode step (the cache grows by one each step)."""
    fast.start(PROMPT_TOKENS + 3 * steps + 8)
    fast.forward(list(range(100, 100 + PROMPT_TOKENS)), None)
    for _ in range(4):
        fast.forward([504], None)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fast.forward([504], None)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def shape_names(fast: FastLlama) -> dict[tuple[int, int], str]:
    names: dict[tuple[int, int], list[str]] = defaultdict(list)
    for name in PROJECTIONS:
        shape = tuple(fast.layers[0].weights[name].shape)
        names[shape].append(name)  # type: ignore[index]
    names[tuple(fast.lm_head.shape)].append("lm_head")  # type: ignore[index]
    return {shape: "+".join(n) for shape, n in names.items()}  # type: ignore[misc]


def profile_ops(fast: FastLlama, steps: int) -> dict[str, Any]:
    """Self CPU time per op and per matmul weight shape, per decode step."""
    from torch.profiler import ProfilerActivity, profile

    fast.start(PROMPT_TOKENS + steps + 8)
    fast.forward(list(range(100, 100 + PROMPT_TOKENS)), None)
    fast.forward([504], None)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            fast.forward([504], None)
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in ops)
    names = shape_names(fast)
    element = torch.finfo(fast.dtype).bits // 8
    by_shape: dict[str, dict[str, float]] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key not in ("aten::mm", "aten::addmm"):
            continue
        # mm sees the weight transposed: (in, out)
        weight = next(
            (
                (s[1], s[0])
                for s in event.input_shapes
                if len(s) == 2 and (s[1], s[0]) in names and s[0] != 1
            ),
            None,
        )
        if weight is None:
            continue
        label = names[weight]
        row = by_shape.setdefault(label, {"shape": list(weight), "calls_per_step": 0, "ms": 0.0})
        row["calls_per_step"] += event.count / steps
        row["ms"] += event.self_cpu_time_total / steps / 1000
    for row in by_shape.values():
        read = row["shape"][0] * row["shape"][1] * element * row["calls_per_step"]
        row["mb_read"] = round(read / 1e6, 1)
        row["gb_s"] = round(read / 1e9 / (row["ms"] / 1000), 1) if row["ms"] else None
        row["ms"] = round(row["ms"], 2)
    return {
        "profiled_ms_per_step": round(total_us / steps / 1000, 2),
        "matmuls_by_weight": by_shape,
        "top_ops": [
            {
                "op": e.key,
                "calls_per_step": e.count / steps,
                "self_ms_per_step": round(e.self_cpu_time_total / steps / 1000, 3),
                "share": round(e.self_cpu_time_total / total_us, 3),
            }
            for e in ops[:12]
        ],
    }


def time_call(call: Any, repeats: int = 200) -> float:
    """Median microseconds of `call()`."""
    for _ in range(10):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e6


FORMATS = ("fp32", "bf16", "int8", "int4")


def _prepared(fmt: str, w32: torch.Tensor) -> tuple[Any, int]:
    """(a one-row matmul over `w32` stored as `fmt`, the bytes that weight occupies)."""
    out, inp = w32.shape
    if fmt == "fp32":
        return (lambda x, w=w32: F.linear(x.float(), w)), out * inp * 4
    if fmt == "bf16":
        w16 = w32.to(torch.bfloat16)
        return (lambda x, w=w16: F.linear(x, w)), out * inp * 2
    if fmt == "int8":
        scale = w32.abs().amax(1) / 127
        w8 = torch.round(w32 / scale[:, None]).to(torch.int8)
        s16 = scale.to(torch.bfloat16)
        return (lambda x, w=w8, s=s16: torch._weight_int8pack_mm(x, w, s)), out * inp + out * 2
    packed, scales_zeros = _int4(w32)
    return (
        lambda x, p=packed, sz=scales_zeros: torch._weight_int4pack_mm_for_cpu(x, p, 32, sz)
    ), out * inp // 2 + (out * inp // 32) * 4


def kernels(fast: FastLlama, repeats: int = 5) -> dict[str, Any]:
    """A decode step's 211 one-row matmuls (every layer's own weight, as the model streams
    them from memory, not one weight hot in cache) in fp32, bf16, int8 and int4 weight-only:
    milliseconds per step, and per weight shape the time per call and the bandwidth."""
    shapes = [tuple(fast.layers[0].weights[name].shape) for name in PROJECTIONS]
    order = [shape for _ in fast.layers for shape in shapes] + [tuple(fast.lm_head.shape)]
    names = shape_names(fast)
    out: dict[str, Any] = {}
    for fmt in FORMATS:
        torch.manual_seed(0)
        calls = [(shape, *_prepared(fmt, torch.randn(*shape) * 0.02)) for shape in order]
        xs = {n: torch.randn(1, n, dtype=torch.bfloat16) for n in {s[1] for s in order}}
        whole = _best(calls, xs, repeats)
        by_shape: dict[str, Any] = {}
        for shape in dict.fromkeys(order):
            subset = [c for c in calls if c[0] == shape]
            seconds = _best(subset, xs, repeats)
            by_shape[names[shape]] = {
                "calls": len(subset),
                "us_per_call": round(seconds / len(subset) * 1e6, 1),
                "gb_s": round(sum(c[2] for c in subset) / 1e9 / seconds, 1),
            }
        total = sum(c[2] for c in calls)
        out[fmt] = {
            "matmul_ms_per_step": round(whole * 1000, 2),
            "mb_per_step": round(total / 1e6, 1),
            "gb_s": round(total / 1e9 / whole, 1),
            "by_weight": by_shape,
        }
    return out


@torch.inference_mode()
def _best(calls: list[Any], xs: dict[int, torch.Tensor], repeats: int) -> float:
    """Fastest of `repeats` passes over `calls` (after one warm-up pass), in seconds."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for (_, inp), call, _ in calls:
            call(xs[inp])
        times.append(time.perf_counter() - start)
    return min(times[1:])


def _int4(w32: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed weight, scales and zeros) for torch's CPU int4 kernel, groups of 32."""
    out, inp = w32.shape
    groups = w32.reshape(out, inp // 32, 32)
    low, high = groups.amin(-1), groups.amax(-1)
    scale = ((high - low) / 15).clamp(min=1e-8)
    q = torch.clamp(torch.round((groups - low[..., None]) / scale[..., None]), 0, 15)
    q = q.reshape(out, inp).to(torch.int32)
    zero = low + 8 * scale  # the kernel computes (q - 8) * scale + zero
    scales_zeros = torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return torch._convert_weight_to_int4pack_for_cpu(q, 1), scales_zeros


def bandwidth() -> dict[str, float]:
    """GB/s of reading a 256 MB buffer (sum), the box's practical ceiling for decode."""
    data = torch.ones(64 * 1024 * 1024, dtype=torch.float32)
    threads = torch.get_num_threads()
    us = time_call(lambda: data.sum(), repeats=20)
    return {f"read_gb_s_{threads}_threads": round(data.numel() * 4 / 1e3 / us, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models" / "SmolLM2-135M-Instruct"))
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--gguf", type=Path, default=None, help="Q4_1 GGUF for llama.cpp's step (default: cached)"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "cpu-decode-profile.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    model = load_base_model(args.model, device="cpu", dtype="float32").model
    gguf = args.gguf or llama_cpp_ref.CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf"
    before = llama_cpp_step(gguf, args.threads)
    report: dict[str, Any] = {
        "cpu": _cpu(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_before": load_before,
        "prompt_tokens": PROMPT_TOKENS,
    }
    for dtype in (torch.bfloat16, torch.float32):
        fast = FastLlama(model, 1024, dtype)
        label = str(dtype).removeprefix("torch.")
        with torch.inference_mode():
            ms = step_time(fast, args.steps) * 1000
            report[label] = {"wall_ms_per_step": round(ms, 2), "tok_s": round(1000 / ms, 1)}
            report[label].update(profile_ops(fast, min(args.steps, 32)))
        if dtype == torch.bfloat16:
            report["kernels"] = kernels(fast)
    report["memory"] = bandwidth()
    after = llama_cpp_step(gguf, args.threads)
    report["llama_cpp"] = {"before": before, "after": after}
    steps = [r["ms_per_step"] for r in (before, after) if "ms_per_step" in r]
    if steps:
        reference = sum(steps) / len(steps)
        report["llama_cpp"]["ms_per_step"] = round(reference, 2)
        report["projection"] = project(report, reference)
    report["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("memory",)}, indent=1))  # noqa: T201
    for label in ("bfloat16", "float32"):
        print(label, report[label]["wall_ms_per_step"], "ms/step")  # noqa: T201
        for name, row in report[label]["matmuls_by_weight"].items():
            print(f"  {name:24} {row['ms']:6.2f} ms  {row['mb_read']:6.1f} MB  {row['gb_s']} GB/s")  # noqa: T201
    for fmt, row in report["kernels"].items():
        print(f"{fmt}: {row['matmul_ms_per_step']} ms/step {row['gb_s']} GB/s")  # noqa: T201
    for fmt, row in report.get("projection", {}).get("formats", {}).items():
        print(f"{fmt} step {row['step_ms']} ms = {row['share_of_llama_cpp']:.0%} of llama.cpp")  # noqa: T201
    print(f"wrote {args.out}")  # noqa: T201


def llama_cpp_step(gguf: Path, threads: int) -> dict[str, Any]:
    """llama.cpp's decode step on the same box at the same threads (llama-bench, 64 tokens
    after 45), from the build `bench/llama_cpp_ref.py` caches; or why not."""
    if not gguf.is_file():
        return {"skipped": f"no GGUF at {gguf} (bench/cpu_generate.py --gguf default fetches it)"}
    try:
        build = llama_cpp_ref.obtain()
    except llama_cpp_ref.BuildError as exc:
        return {"skipped": str(exc)}
    row = llama_cpp_ref.measure_llama_bench(build, gguf, threads, 100, 64, PROMPT_TOKENS, 3)
    if "decode_tok_s" in row:
        row["ms_per_step"] = round(1000 / row["decode_tok_s"], 2)
    return row


def project(report: dict[str, Any], reference_ms: float) -> dict[str, Any]:
    """The bf16 step with its matmuls swapped for each format's (everything else as measured),
    against llama.cpp's step."""
    bf16 = report["bfloat16"]
    matmuls = sum(row["ms"] for row in bf16["matmuls_by_weight"].values())
    other = max(bf16["wall_ms_per_step"] - matmuls, 0.0)
    formats = {}
    for fmt, row in report["kernels"].items():
        step = row["matmul_ms_per_step"] + other
        formats[fmt] = {
            "step_ms": round(step, 1),
            "share_of_llama_cpp": round(reference_ms / step, 3),
        }
    return {
        "what": "bf16 step's non-matmul time plus each format's 211 matmuls, against llama.cpp",
        "bf16_matmul_ms": round(matmuls, 1),
        "bf16_other_ms": round(other, 1),
        "measured_bf16_share_of_llama_cpp": round(reference_ms / bf16["wall_ms_per_step"], 3),
        "formats": formats,
    }


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


if __name__ == "__main__":
    main()
