"""Check and time nf4_matmul against bitsandbytes on Falcon-7B's decode shapes (CUDA only).

    python bench/nf4_matmul_gpu.py [--sweep] [--out bench/results/nf4-matmul.json]

For each weight shape (K, N) and batch rows M: the relative error of nf4_matmul against
x @ dequantize_4bit(W).T in float32, then the median time of nf4_matmul and of bitsandbytes'
own `matmul_4bit`, both replayed from CUDA graphs over enough weight copies that L2 never
holds them, against a device-to-device copy as the bandwidth ceiling. `--sweep` also times a
few tile configurations per shape and reports the best next to the default `pick_config`.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bitsandbytes as bnb  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402

from app.engine.kernels.availability import sm_count  # noqa: E402
from app.engine.kernels.nf4_matmul import (  # noqa: E402
    KernelConfig,
    nf4_matmul,
    pack_linear4bit,
    pick_config,
    split_for,
)
from bench.nf4_bench_common import make_linear, rel_err, replay_check, save  # noqa: E402

SHAPES = [(4544, 4672), (4544, 4544), (4544, 18176), (18176, 4544)]  # (K, N): qkv, dense, mlp
ROWS = [1, 2, 4, 8, 16, 32, 64]
SWEEP_ROWS = [1, 16, 64, 4, 8]  # in the order they are swept
ROTATE_BYTES = 320 << 20  # weight copies per shape: several times H200's 60 MB L2
SHAPE_SWEEP_SECONDS = 36  # per shape; past this only the defaults are measured


def bnb_matmul(x: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    return bnb.matmul_4bit(x, module.weight.t(), quant_state=module.weight.quant_state)


def graph_time_us(calls, per: int) -> float:
    """Median time of one call, replaying `calls` (a list of closures) from one CUDA graph."""
    for call in calls:
        call()  # compile / warm up before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    torch.cuda.synchronize()
    ms = do_bench(graph.replay, warmup=3, rep=15, return_mode="median")
    return ms * 1000 / per


def copy_gbps() -> float:
    src = torch.randn(1 << 29, device="cuda", dtype=torch.float16)  # 1 GiB
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=20, rep=100, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms / 1000) / 1e9


def candidates(m: int, n: int, k: int, sms: int) -> list[KernelConfig]:
    """The default first, then N tiles x K splits (in waves of SM count) x prefetch."""
    found = [pick_config(m, n, k, 64, sms)]
    m_tiles = triton.cdiv(m, max(16, triton.next_power_of_2(m)))
    for block_n, warps in ((64, 4), (128, 4), (128, 8)):
        for waves in (2, 4, 8):
            split = split_for(n, k, 64, block_n, m_tiles, waves * sms)
            for prefetch in (False, True):
                if warps == 8 and (waves == 8 or not prefetch):
                    continue
                found.append(KernelConfig(block_n, split, warps, 3, prefetch=prefetch))
    return list(dict.fromkeys(found))


def measure_shape(k: int, n: int, args, copy: float) -> list[dict]:
    started = time.monotonic()
    sms = sm_count(torch.cuda.current_device())
    probe = make_linear(n, k)
    weight_bytes = pack_bytes(pack_linear4bit(probe))
    copies = max(2, math.ceil(ROTATE_BYTES / weight_bytes))
    modules = [probe] + [make_linear(n, k) for _ in range(copies - 1)]
    packs = [pack_linear4bit(module) for module in modules]
    rows = []
    order = sorted(
        args.rows,
        key=lambda m: (m not in SWEEP_ROWS, SWEEP_ROWS.index(m) if m in SWEEP_ROWS else m),
    )
    for m in order:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        qs = modules[0].weight.quant_state
        dense = bnb.functional.dequantize_4bit(modules[0].weight.data, qs).float()
        ref = x.float() @ dense.T
        try:
            out = nf4_matmul(x, packs[0])
            err = rel_err(out, ref)
            ok = math.isfinite(err) and err < 1e-2 and out.dtype == x.dtype
        except Exception as exc:
            print(f"  default failed: {type(exc).__name__}: {str(exc)[:300]}")
            err, ok = float("nan"), False
        bnb_err = rel_err(bnb_matmul(x, modules[0]), ref)
        default = pick_config(m, n, k, packs[0].group_size, sms)
        sweep = args.sweep and m in SWEEP_ROWS  # 2, 4 and 8 rows run 1's kernel (16-row tile)
        tried = candidates(m, n, k, sms) if sweep else [default]
        timings, errors = {}, {}
        for cfg in tried:
            if cfg != default and time.monotonic() - started > SHAPE_SWEEP_SECONDS:
                continue
            try:
                cfg_err = rel_err(nf4_matmul(x, packs[0], config=cfg), ref)
                if not cfg_err < 1e-2:
                    print(f"  config {cfg} is wrong: rel err {cfg_err}")
                    continue
                calls = [lambda p=p, c=cfg, x=x: nf4_matmul(x, p, config=c) for p in packs]
                timings[cfg] = graph_time_us(calls, len(packs))
                errors[cfg] = cfg_err
            except Exception as exc:  # a tile that fails to compile is a finding, not a stop
                print(f"  config {cfg} failed: {type(exc).__name__}: {str(exc)[:200]}")
        if not timings:
            continue
        ours = timings.get(default, float("nan"))
        best_cfg = min(timings, key=timings.get)
        bnb_calls = [lambda mod=mod, x=x: bnb_matmul(x, mod) for mod in modules]
        try:
            bnb_us, bnb_mode = graph_time_us(bnb_calls, len(modules)), "graph"
        except Exception as exc:
            print(f"  bnb graph capture failed ({type(exc).__name__}); timing it eagerly")
            torch.cuda.synchronize()
            ms = do_bench(
                lambda calls=bnb_calls: [c() for c in calls], warmup=5, rep=25, return_mode="median"
            )
            bnb_us, bnb_mode = ms * 1000 / len(modules), "eager"
        moved = weight_bytes + m * k * 2 + m * n * 2
        row = {
            "K": k,
            "N": n,
            "M": m,
            "rel_err": err,
            "bnb_rel_err": bnb_err,
            "ok": ok,
            "nf4_us": ours,
            "config": vars(default),
            "gbps": moved / ours / 1e3,
            "pct_copy": 100 * moved / ours / 1e3 / copy,
            "bnb_us": bnb_us,
            "bnb_timing": bnb_mode,
            "speedup_vs_bnb": bnb_us / ours,
            "best_us": timings[best_cfg],
            "best_config": vars(best_cfg),
            "sweep": [[*vars(c).values(), round(t, 2), errors[c]] for c, t in timings.items()],
            "sweep_fields": [*vars(default), "us", "rel_err"],
            "weight_copies": len(packs),
        }
        rows.append(row)
        print(
            f"K={k:5d} N={n:5d} M={m:2d} err={err:.1e} {ours:7.1f}us "
            f"{row['gbps']:6.0f}GB/s {row['pct_copy']:4.0f}% bnb={bnb_us:7.1f}us "
            f"x{row['speedup_vs_bnb']:.2f} best={timings[best_cfg]:.1f}us {vars(best_cfg)}",
            flush=True,
        )
    del modules, packs
    torch.cuda.empty_cache()
    return sorted(rows, key=lambda row: row["M"])


def pack_bytes(packed) -> int:
    return packed.packed.numel() + packed.scales.numel() * packed.scales.element_size()


def graph_check() -> dict:
    """One nf4_matmul captured alone in a graph (M=1): replays match eager, and its time."""
    module = make_linear(4544, 4544)
    packed = pack_linear4bit(module)
    same, graph, x = replay_check(lambda x: nf4_matmul(x, packed), 4544, "cuda")
    replay_us = do_bench(graph.replay, warmup=5, rep=25, return_mode="median") * 1000
    eager_us = do_bench(lambda: nf4_matmul(x, packed), warmup=5, rep=25) * 1000
    print(f"graph M=1 4544x4544: replay right={same} {replay_us:.1f}us (eager {eager_us:.1f}us)")
    return {"replay_matches_eager": same, "replay_us": replay_us, "eager_us": eager_us}


def safe_graph_check() -> dict:
    try:
        return graph_check()
    except Exception as exc:
        print(f"graph check failed: {type(exc).__name__}: {str(exc)[:300]}")
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--rows", type=int, nargs="+", default=ROWS)
    parser.add_argument("--out", default="bench/results/nf4-matmul.json")
    args = parser.parse_args()
    started = time.monotonic()
    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    copy = copy_gbps()
    print(f"{props.name}: {props.multi_processor_count} SMs, copy {copy:.0f} GB/s")
    result = {
        "device": props.name,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "bitsandbytes": bnb.__version__,
        "copy_gbps": copy,
        "command": "python bench/nf4_matmul_gpu.py" + (" --sweep" if args.sweep else ""),
        "graph": safe_graph_check(),
        "rows": [],
    }
    for k, n in SHAPES:
        result["rows"] += measure_shape(k, n, args, copy)
        save(result, args.out)
    print(
        f"\n{'K':>5} {'N':>5} {'M':>3} {'err':>7} {'us':>7} {'GB/s':>6} {'%copy':>5} "
        f"{'bnb us':>7} {'xbnb':>5}"
    )
    for r in result["rows"]:
        print(
            f"{r['K']:5d} {r['N']:5d} {r['M']:3d} {r['rel_err']:7.1e} {r['nf4_us']:7.1f} "
            f"{r['gbps']:6.0f} {r['pct_copy']:5.0f} {r['bnb_us']:7.1f} {r['speedup_vs_bnb']:5.2f}"
        )
    print(f"all correct: {all(r['ok'] for r in result['rows'])}; {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
