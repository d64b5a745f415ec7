"""Check and time the tensor-core NF4 GEMV (nf4_mma) against Teller's Triton GEMV and
bitsandbytes on Falcon-7B's four projection shapes, one activation row.

    python bench/nf4_mma_gpu.py [--out bench/results/nf4-mma.json]   # CUDA + bitsandbytes
    python bench/nf4_mma_gpu.py --smoke                              # CPU, tiny shapes

Per shape: each kernel's relative error against x @ dequantize_4bit(W).T in float32 and its
median time, replayed from a CUDA graph over enough weight copies that L2 never holds them
(bench/nf4_gemv_gpu.py's Timer); bandwidth against a measured device-to-device copy; and one
decode step's worth (32 layers of the four shapes) per kernel.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.kernels.nf4_gemv import nf4_gemv, pack_gemv  # noqa: E402
from app.engine.kernels.nf4_mma import (  # noqa: E402
    KernelVariant,  # noqa: E402
    nf4_mma_gemv,
    pack_mma,
)
from bench.nf4_bench_common import (  # noqa: E402
    kernel_registers,
    make_linear,
    rel_err,
    replay_check,
    save,
)
from bench.nf4_gemv_gpu import Timer, bnb_gemv, short  # noqa: E402

SHAPES = [(4544, 4672), (4544, 4544), (4544, 18176), (18176, 4544)]  # (K, N) per layer
SMOKE_SHAPES = [(256, 64), (128, 96)]
ROTATE_BYTES = 256 << 20
LAYERS = 32
# (warps, depth, decode, blocks per SM): the default, then deeper register pipelines at
# finer block sizes (a block of 16 warps that needs more registers drops a whole block per SM).
SWEEP = [
    (16, 1, 1, 2), (16, 2, 1, 2), (16, 2, 1, 1), (8, 2, 1, 3), (8, 2, 1, 4),
    (8, 3, 1, 3), (8, 4, 1, 3), (4, 2, 1, 6), (4, 4, 1, 6),
]  # fmt: skip


def measure(k: int, n: int, device: str, timer: Timer, copy: float) -> dict:
    probe = make_linear(n, k, device)
    copies = max(2, math.ceil(ROTATE_BYTES / (n * k // 2))) if timer.cuda else 2
    modules = [probe] + [make_linear(n, k, device) for _ in range(copies - 1)]
    x = torch.randn(1, k, device=device, dtype=torch.bfloat16)
    import bitsandbytes as bnb

    dense = bnb.functional.dequantize_4bit(probe.weight.data, probe.weight.quant_state).float()
    ref = x.float() @ dense.T
    moved = n * k // 2 + n * (k // 64) * 2 + k * 2 + n * 2
    row: dict = {"K": k, "N": n, "bytes": moved, "copies": copies}
    kernels = {
        "mma": (pack_mma, nf4_mma_gemv),
        "triton_gemv": (pack_gemv, nf4_gemv),
        "bnb": (lambda m: m, bnb_gemv_of),
    }
    for name, (pack, run) in kernels.items():
        entry: dict = {}
        try:
            packs = [pack(m) for m in modules]
            entry["rel_err"] = rel_err(run(x, packs[0]), ref)
            entry["us"] = timer.time_us([lambda p=p, run=run: run(x, p) for p in packs])
            entry["gbps"] = moved / entry["us"] / 1e3
            entry["pct_copy"] = 100 * entry["gbps"] / copy if copy == copy else None
        except Exception as exc:  # noqa: BLE001 - a kernel that fails is a finding
            entry["error"] = short(exc)
        row[name] = entry
    if timer.cuda and "error" not in row["mma"]:
        mma_packs = [pack_mma(m) for m in modules]
        row["mma_sweep"] = []
        for config in SWEEP:
            entry = dict(zip(("warps", "depth", "decode", "per_sm"), config, strict=True))
            try:
                out = nf4_mma_gemv(x, mma_packs[0], config=config)
                entry["rel_err"] = rel_err(out, ref)
                calls = [lambda p=p, c=config: nf4_mma_gemv(x, p, config=c) for p in mma_packs]
                entry["us"] = timer.time_us(calls)
                entry["registers"] = kernel_registers(KernelVariant(*config[:3]))
                entry["pct_copy"] = 100 * moved / entry["us"] / 1e3 / copy
            except Exception as exc:  # noqa: BLE001
                entry["error"] = short(exc)
            row["mma_sweep"].append(entry)
        del mma_packs
        packed = pack_mma(probe)
        same, _, _ = replay_check(lambda v: nf4_mma_gemv(v, packed), k, device)
        row["mma"]["graph_replay_ok"] = same
        row["epilogue"] = epilogue(x, packed, ref, timer, [pack_mma(m) for m in modules])
    del modules
    if timer.cuda:
        torch.cuda.empty_cache()
    return row


def epilogue(x: torch.Tensor, packed, ref: torch.Tensor, timer: Timer, packs: list) -> dict:
    """LoRA (r=64) + GELU in the kernel's epilogue against the same as separate ops."""
    n = packed.out_features
    t = torch.randn(1, 64, device=x.device, dtype=x.dtype)
    b = torch.randn(n, 128, device=x.device, dtype=x.dtype)[:, 64:] * 0.02  # strided, as a bank
    want = torch.nn.functional.gelu(ref + t.float() @ b.float().T)
    fused = nf4_mma_gemv(x, packed, lora=(t, b), gelu=True)

    def separate(p) -> torch.Tensor:
        return torch.nn.functional.gelu(torch.addmm(nf4_mma_gemv(x, p), t, b.t()))

    fused_calls = [lambda p=p: nf4_mma_gemv(x, p, lora=(t, b), gelu=True) for p in packs]
    return {
        "rel_err": rel_err(fused, want),
        "fused_us": timer.time_us(fused_calls),
        "separate_us": timer.time_us([lambda p=p: separate(p) for p in packs]),
    }


def bnb_gemv_of(x: torch.Tensor, module) -> torch.Tensor:
    return bnb_gemv(x, module)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/nf4-mma.json"))
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    timer = Timer(cuda=device == "cuda")
    copy = timer.copy_gbps()
    result: dict = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
        "copy_gbps": copy,
        "shapes": [
            measure(k, n, device, timer, copy) for k, n in (SMOKE_SHAPES if args.smoke else SHAPES)
        ],
    }
    step = {}
    for name in ("mma", "triton_gemv", "bnb"):
        times = [row[name].get("us") for row in result["shapes"]]
        if all(t is not None for t in times):
            step[name] = LAYERS * sum(times) / 1000
    best = [
        min((e["us"] for e in r.get("mma_sweep", []) if "us" in e), default=None)
        for r in result["shapes"]
    ]
    if all(b is not None for b in best):
        step["mma_best_config"] = LAYERS * sum(best) / 1000
    result["decode_step_ms"] = step  # 32 layers x the four projections, GEMVs only
    save(result, args.out)
    for row in result["shapes"]:
        sweep = [e for e in row.get("mma_sweep", []) if "us" in e]
        if sweep:
            best = min(sweep, key=lambda e: e["us"])
            print(f"  best mma config {best}")  # noqa: T201
        cells = [
            f"{name} {row[name].get('us', float('nan')):7.1f} us "
            f"({row[name].get('pct_copy') or 0:4.1f}%, err {row[name].get('rel_err', -1):.1e})"
            if "error" not in row[name]
            else f"{name} FAILED {row[name]['error'][:80]}"
            for name in ("mma", "triton_gemv", "bnb")
        ]
        print(f"{row['K']:>6}x{row['N']:<6}", " | ".join(cells))  # noqa: T201
    print("GEMV time of one decode step (ms):", step)  # noqa: T201


if __name__ == "__main__":
    main()
