"""Check and time nf4_gemv (one activation row) against bitsandbytes on Falcon-7B's shapes.

    python bench/nf4_gemv_gpu.py [--out bench/results/nf4-gemv.json]   # CUDA + bitsandbytes
    python bench/nf4_gemv_gpu.py --smoke                               # CPU, tiny shapes

For each weight shape (K, N): the relative error of every decode variant against
x @ dequantize_4bit(W).T in float32; the median time of each variant at the default launch
(`pick_gemv_config`), of a bounded sweep of launch configs, of bitsandbytes' GEMV
(`bnb.matmul_4bit` with a (1, K) input) and of `flat_nf4_linear`'s forward, each replayed
from a CUDA graph over enough weight copies that the 60 MB L2 never holds them; and the
bandwidth reached against a measured device-to-device copy. One variant that fails to compile
or is wrong is reported in the JSON and the rest are still measured. `--smoke` runs the same
code on CPU (torch reference path, eager timing) so its logic is tested without a GPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bitsandbytes as bnb  # noqa: E402

from app.engine.kernels.nf4_flat import flat_nf4_linear  # noqa: E402
from app.engine.kernels.nf4_gemv import (  # noqa: E402
    DECODES,
    GemvConfig,
    nf4_gemv,
    pack_gemv,
    pick_gemv_config,
)
from bench.nf4_bench_common import make_linear, rel_err, replay_check, save  # noqa: E402

SHAPES = [(4544, 4672), (4544, 4544), (4544, 18176), (18176, 4544)]  # (K, N): qkv, dense, mlp
SMOKE_SHAPES = [(256, 96), (192, 80)]
ROTATE_BYTES = 320 << 20  # weight copies per shape: several times H200's 60 MB L2
SWEEP_SECONDS = 22.0  # per shape; past this only the defaults are measured
TOLERANCE = 1e-2  # relative L2 error in bf16


def sweep_configs(default: GemvConfig) -> list[GemvConfig]:
    """Launch configs around the default (its decode), likeliest first so a cut sweep still
    covers the winners of the last H200 run."""
    found = []
    for block_n, gpi, warps in ((2, 16, 1), (4, 16, 1), (4, 32, 2), (8, 16, 1), (2, 32, 1)):
        for prefetch in (True, False):
            found.append(
                replace(
                    default,
                    block_n=block_n,
                    groups_per_iter=gpi,
                    num_warps=warps,
                    prefetch=prefetch,
                    split_k=1,
                )
            )
    for split in (2, 4):
        found.append(replace(default, split_k=split))
    for block_n, gpi, warps in ((8, 8, 4), (4, 8, 1), (16, 16, 1)):
        found.append(replace(default, block_n=block_n, groups_per_iter=gpi, num_warps=warps))
    return [c for c in dict.fromkeys(found) if c != default]


def bnb_gemv(x: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    return bnb.matmul_4bit(x, module.weight.t(), quant_state=module.weight.quant_state)


class Timer:
    """Median microseconds of one call: CUDA graph replay over weight copies, or eager (CPU)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def time_us(self, calls: list) -> float:
        for call in calls:
            call()  # compile / warm up before capture
        if not self.cuda:
            started = time.perf_counter()
            for _ in range(3):
                for call in calls:
                    call()
            return (time.perf_counter() - started) / (3 * len(calls)) * 1e6
        from triton.testing import do_bench

        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for call in calls:
                call()
        graph.replay()
        torch.cuda.synchronize()
        ms = do_bench(graph.replay, warmup=3, rep=15, return_mode="median")
        return ms * 1000 / len(calls)

    def copy_gbps(self) -> float:
        if not self.cuda:
            return float("nan")
        from triton.testing import do_bench

        src = torch.randn(1 << 29, device="cuda", dtype=torch.float16)  # 1 GiB
        dst = torch.empty_like(src)
        ms = do_bench(lambda: dst.copy_(src), warmup=20, rep=100, return_mode="median")
        return 2 * (1 << 29) * 2 / (ms / 1000) / 1e9


def short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:400]


class Packs:
    """The weight copies packed per tile shape (a tile is fixed at pack time), made lazily."""

    def __init__(self, modules: list):
        self.modules = modules
        self.by_tile: dict[tuple[int, int], list] = {}

    def __call__(self, cfg: GemvConfig) -> list:
        tile = (cfg.block_n, cfg.groups_per_iter)
        if tile not in self.by_tile:
            self.by_tile[tile] = [pack_gemv(m, tile=tile) for m in self.modules]
        return self.by_tile[tile]


def try_config(cfg, x, packs_for, ref, timer) -> dict:
    """Error and time of one launch config; a compile failure or wrong answer is a result."""
    entry = {"config": asdict(cfg)}
    try:
        packs = packs_for(cfg)
        err = rel_err(nf4_gemv(x, packs[0], config=cfg), ref)
        entry["rel_err"] = err
        if not err < TOLERANCE:
            entry["error"] = f"wrong: rel err {err}"
            return entry
        calls = [lambda p=p: nf4_gemv(x, p, config=cfg) for p in packs]
        entry["us"] = timer.time_us(calls)
    except Exception as exc:  # a variant that fails to compile is a finding, not a stop
        entry["error"] = short(exc)
    return entry


def time_baseline(name: str, calls, x, ref, timer) -> dict:
    entry = {"name": name}
    try:
        entry["rel_err"] = rel_err(calls[0](), ref)
        entry["us"] = timer.time_us(calls)
    except Exception as exc:
        entry["error"] = short(exc)
    return entry


def measure_shape(k: int, n: int, device: str, timer: Timer, copy: float, sms: int) -> dict:
    started = time.monotonic()
    probe = make_linear(n, k, device)
    weight_bytes = pack_gemv(probe).nbytes
    copies = max(2, math.ceil(ROTATE_BYTES / weight_bytes)) if timer.cuda else 2
    modules = [probe] + [make_linear(n, k, device) for _ in range(copies - 1)]
    packs = Packs(modules)
    x = torch.randn(1, k, device=device, dtype=torch.bfloat16)
    state = probe.weight.quant_state
    dense = bnb.functional.dequantize_4bit(probe.weight.data, state).float()
    ref = x.float() @ dense.T  # (1, N)
    moved = n * k // 2 + n * (k // 64) * 2 + k * 2 + n * 2  # unpadded, fp16 scales

    default = pick_gemv_config(n, k, sms)
    variants = [try_config(replace(default, decode=d), x, packs, ref, timer) for d in DECODES]
    timed = [v for v in variants if "us" in v]
    best_decode = min(timed, key=lambda v: v["us"])["config"]["decode"] if timed else "lut16"
    sweep = []
    for cfg in sweep_configs(replace(default, decode=best_decode)):
        if time.monotonic() - started > SWEEP_SECONDS:
            break
        sweep.append(try_config(cfg, x, packs, ref, timer))
    everything = [v for v in variants + sweep if "us" in v]
    best = min(everything, key=lambda v: v["us"]) if everything else None

    bnb_calls = [lambda m=m: bnb_gemv(x, m) for m in modules]
    flats = [flat_nf4_linear(m) for m in modules]
    baselines = [time_baseline("bnb.matmul_4bit", bnb_calls, x, ref, timer)]
    if all(f is not None for f in flats):
        flat_calls = [lambda f=f: f(x) for f in flats]
        baselines.append(time_baseline("flat_nf4_linear", flat_calls, x, ref, timer))
    for entry in variants + sweep + baselines:
        if "us" in entry:
            gbps = moved / entry["us"] / 1e3
            entry["gbps"] = gbps
            entry["pct_copy"] = 100 * gbps / copy if copy == copy else None
    bnb_us = baselines[0].get("us")
    row = {
        "K": k,
        "N": n,
        "bytes": moved,
        "weight_copies": len(modules),
        "default_config": asdict(default),
        "variants": variants,
        "sweep": sweep,
        "baselines": baselines,
        "best": best,
        "best_speedup_vs_bnb": bnb_us / best["us"] if best and bnb_us else None,
        "all_correct": all("error" not in v or "wrong" not in v["error"] for v in variants),
        "seconds": time.monotonic() - started,
    }
    del modules, packs, flats
    if timer.cuda:
        torch.cuda.empty_cache()
    return row


def graph_check(device: str) -> dict:
    """The default nf4_gemv captured alone in a graph: a replay sees new x, and its time."""
    try:
        module = make_linear(4544, 4544, device)
        packed = pack_gemv(module)
        same, _, _ = replay_check(lambda x: nf4_gemv(x, packed), 4544, device)
        return {"replay_matches_eager": same}
    except Exception as exc:
        return {"error": short(exc)}


def print_table(result: dict) -> None:
    print(f"\n{'K':>5} {'N':>5} {'what':>28} {'err':>8} {'us':>7} {'GB/s':>6} {'%copy':>5}")
    for row in result["rows"]:
        best = row["best"]
        entries = [("default " + v["config"]["decode"], v) for v in row["variants"]]
        entries += [(b["name"], b) for b in row["baselines"]]
        if best:
            c = best["config"]
            entries.append((f"best {c['decode']} {c['block_n']}x{c['groups_per_iter']}", best))
        for name, e in entries:
            if "us" not in e:
                print(f"{row['K']:5d} {row['N']:5d} {name:>28} {e.get('error', '')[:60]}")
                continue
            pct = e["pct_copy"] if e["pct_copy"] is not None else float("nan")
            print(
                f"{row['K']:5d} {row['N']:5d} {name:>28} {e['rel_err']:8.1e} {e['us']:7.2f} "
                f"{e['gbps']:6.0f} {pct:5.0f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, reference path")
    parser.add_argument("--out", default="bench/results/nf4-gemv.json")
    args = parser.parse_args()
    started = time.monotonic()
    torch.manual_seed(0)
    cuda = not args.smoke
    if cuda and not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (or --smoke)")
    device = "cuda" if cuda else "cpu"
    timer = Timer(cuda)
    copy = timer.copy_gbps()
    if cuda:
        import triton

        props = torch.cuda.get_device_properties(0)
        name, sms, triton_version = props.name, props.multi_processor_count, triton.__version__
    else:
        name, sms, triton_version = "cpu (smoke)", 132, None
    print(f"{name}: {sms} SMs, copy {copy:.0f} GB/s", flush=True)
    result = {
        "device": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "bitsandbytes": bnb.__version__,
        "copy_gbps": copy if copy == copy else None,
        "command": "python bench/nf4_gemv_gpu.py" + (" --smoke" if args.smoke else ""),
        "graph": graph_check(device) if cuda else None,
        "rows": [],
    }
    for k, n in SMOKE_SHAPES if args.smoke else SHAPES:
        try:
            row = measure_shape(k, n, device, timer, copy, sms)
        except Exception as exc:  # keep the other shapes
            row = {"K": k, "N": n, "error": short(exc)}
            print(f"K={k} N={n} failed: {row['error']}", flush=True)
        result["rows"].append(row)
        if "best" in row and row["best"]:
            b = row["best"]
            print(f"K={k} N={n}: best {b['us']:.2f}us {b['config']}", flush=True)
        save(result, args.out)
    result["best_per_shape"] = {
        f"{r['K']}x{r['N']}": r["best"]["config"] for r in result["rows"] if r.get("best")
    }
    result["seconds"] = time.monotonic() - started
    save(result, args.out)
    print_table({"rows": [r for r in result["rows"] if "error" not in r]})
    print(f"total {result['seconds']:.0f}s; wrote {args.out}")


if __name__ == "__main__":
    main()
