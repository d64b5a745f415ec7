"""Check and time the batched-decode tensor-core kernel (nf4_mma_rows) against the Triton
`nf4_matmul` that serves 2-64 rows today, bitsandbytes, and the one-row GEMV, on the projection
shapes of Llama-3.1-8B and Falcon-7B.

    python bench/nf4_mma_rows_gpu.py [--out bench/results/nf4-mma-rows.json]   # CUDA
    python bench/nf4_mma_rows_gpu.py --smoke                                   # CPU, tiny

Why: at 32 streams a Llama-3.1-8B decode step spends most of its time in `nf4_matmul`, which
reaches 11-19 % of copy bandwidth (bench/results/nf4-matmul.json); the tensor-core GEMV reads
the same weights at 25-40 % for one row, and its mma has eight columns of which it uses one.
`nf4_mma_rows` decodes each weight fragment once for all rows.

Per shape and row count: every kernel's relative error against x @ dequantize_4bit(W).T in
float32 and its median time, replayed from a CUDA graph over enough weight copies that L2 never
holds them (bench/nf4_gemv_gpu.py's Timer), as % of a measured device-to-device copy; a sweep of
the rows kernel's launch configurations (warps, row tiles per warp, blocks per SM) with their
registers per thread; and per model the projections' time of one decode step (all layers) per
kernel at each row count, which is what `--variants mma` against `hybrid` changes in
bench/serve_gpu.py. For one row also the GEMV with a rank-64 LoRA update in its epilogue, with
and without `prefetch` (its % of copy counts the weight's bytes, not B's). The run fails
(exit 1) when any rows-kernel result is wrong.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.kernels.low_rank_row import low_rank_row  # noqa: E402
from app.engine.kernels.nf4_matmul import nf4_matmul, pack_linear4bit  # noqa: E402
from app.engine.kernels.nf4_mma import (  # noqa: E402
    CANDIDATE_GEMV,
    DEPTH,
    K_ORDERS,
    PER_SM,
    WARPS,
    KernelVariant,
    Shrink,
    nf4_mma_gemv,
    pack_mma,
)
from app.engine.kernels.nf4_mma_rows import (  # noqa: E402
    CANDIDATE_ROWS,
    ROWS_CONFIG,
    SHARED_ROWS_CONFIG,
    TILES_BY_CHUNKS,
    nf4_mma_rows,
    nf4_mma_rows_shared,
    rows_chunks,
    rows_config,
)
from bench.nf4_bench_common import kernel_registers, make_linear, rel_err, save  # noqa: E402
from bench.nf4_gemv_gpu import Timer, bnb_gemv, short  # noqa: E402

MODELS = {  # (K, N) of each 4-bit projection of one layer, and the layer count
    "llama-3.1-8b": ([(4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096),
                      (4096, 14336), (4096, 14336), (14336, 4096)], 32),
    "falcon-7b": ([(4544, 4672), (4544, 4544), (4544, 18176), (18176, 4544)], 32),
}  # fmt: skip
ROWS = [1, 2, 4, 8, 16, 32, 64]
SWEEP = [  # (warps, row tiles per warp, blocks per SM[, decode[, ahead]])
    ROWS_CONFIG, (4, 1, 4), (4, 2, 4), (8, 1, 2), (8, 2, 3), (8, 4, 2), (16, 1, 2), (16, 2, 1),
    (8, 2, 2, 2), (8, 4, 2, 2), CANDIDATE_ROWS,
    (8, 0, 2, 1, 1), (8, 0, 2, 2, 1), (8, 1, 2, 1, 1), (16, 1, 2, 1, 1), (4, 1, 4, 1, 1),
    (8, 2, 3, 1, 1),
]  # fmt: skip
SERVED_LOOP = CANDIDATE_GEMV[:7]
"""The served GEMV's K loop and epilogue build (warps ... prefetch), before occupy and l2_next."""

GEMV_VARIANTS = {  # (warps, depth, decode, per_sm, chain, lean[, prefetch]): as it serves,
    # then switches
    "mma_gemv": (WARPS, DEPTH, 1, PER_SM, 0, 0),
    "mma_gemv_chain": (WARPS, DEPTH, 1, PER_SM, 1, 0),
    "mma_gemv_wide": (WARPS, DEPTH, 2, PER_SM, 0, 0),
    "mma_gemv_lean": (WARPS, DEPTH, 1, PER_SM, 0, 1),
    "mma_gemv_wide_lean_chain": (WARPS, DEPTH, 2, PER_SM, 1, 1),
    "mma_gemv_wide_lean_chain_8w3": (8, DEPTH, 2, 3, 1, 1),
    "mma_gemv_prefetch": (WARPS, DEPTH, 1, PER_SM, 0, 0, 1),  # no adapter: its cost alone
    # as served (88 registers: one block an SM, the next tile asked of L2), without l2_next,
    # and with registers for two blocks an SM
    "mma_gemv_served": CANDIDATE_GEMV,
    "mma_gemv_served_no_l2next": (*SERVED_LOOP, 1, 0),
    "mma_gemv_served_occupy2": (*SERVED_LOOP, 2, 0),
    "mma_gemv_served_occupy2_l2next": (*SERVED_LOOP, 2, 1),
    "mma_gemv_served_splitk": (*SERVED_LOOP, 1, 1, 1),  # stream-K where tiles divide unevenly
}
LORA_GEMV_VARIANTS = {  # the GEMV with a rank-`LORA_RANK` update in its epilogue (one row)
    "mma_gemv_lora": (WARPS, DEPTH, 1, PER_SM, 0, 0, 0),
    "mma_gemv_lora_prefetch": (WARPS, DEPTH, 1, PER_SM, 0, 0, 1),
    "mma_gemv_wide_lean_chain_lora": (WARPS, DEPTH, 2, PER_SM, 1, 1, 0),
    "mma_gemv_wide_lean_chain_lora_prefetch": (WARPS, DEPTH, 2, PER_SM, 1, 1, 1),
    "mma_gemv_served_lora_occupy2": (*SERVED_LOOP, 2, 0),
    "mma_gemv_served_lora_l2next": CANDIDATE_GEMV,
    "mma_gemv_served_lora_splitk": (*SERVED_LOOP, 1, 1, 1),
}
LORA_RANK = 64  # r of the adapters measured serving Llama-3.1-8B (every projection)
SHARED_SWEEP = [SHARED_ROWS_CONFIG, (8, 2, 2), (4, 2, 2), (8, 1, 4), (16, 1, 2)]
"""nf4_mma_rows_shared's (warps, tiles per warp, work items per SM), at every row count."""
SWEEP_ROWS = {1, 8, 32, 64}  # 1: the rows kernel against the GEMV
SMOKE = {"tiny": ([(256, 64), (128, 96)], 2)}
ROTATE_BYTES = 256 << 20
WRONG = 2e-2  # bf16 results of a correct kernel are ~3e-3 from the float32 product


class Plan(NamedTuple):
    """What one run measures: row counts, k orders of the packing, rows with the sweep."""

    rows: list[int]
    orders: list[int]
    sweep_rows: set[int]


def registers(warps: int, tiles: int, chunks: int, korder: int, decode: int, ahead: int) -> int:
    """Registers per thread of one compiled rows-kernel variant."""
    tiles = tiles or TILES_BY_CHUNKS[chunks]
    variant = KernelVariant(
        warps, decode=decode, tiles=tiles, chunks=chunks, korder=korder, ahead=ahead
    )
    return kernel_registers(variant, "nf4_mma_rows")


def measure_shape(k: int, n: int, device: str, timer: Timer, copy: float, plan: Plan) -> dict:
    copies = max(2, math.ceil(ROTATE_BYTES / (n * k // 2))) if timer.cuda else 2
    modules = [make_linear(n, k, device) for _ in range(copies)]
    import bitsandbytes as bnb

    probe = modules[0].weight
    dense = bnb.functional.dequantize_4bit(probe.data, probe.quant_state).float()
    mma = {order: [pack_mma(m, k_order=order) for m in modules] for order in plan.orders}
    triton = [pack_linear4bit(m) for m in modules] if timer.cuda else None
    weight_bytes = n * k // 2 + n * (k // 64) * 2
    row: dict = {"K": k, "N": n, "weight_bytes": weight_bytes, "copies": copies, "rows": {}}
    for rows in plan.rows:
        x = torch.randn(rows, k, device=device, dtype=torch.bfloat16)
        kernels = Kernels(x, x.float() @ dense.T, weight_bytes + rows * (k + n) * 2, timer, copy)
        kernels.sweep_rows = plan.sweep_rows
        row["rows"][str(rows)] = kernels.measure(mma, triton, modules)
    return row


class Kernels:
    """Every kernel on one activation block `x`: its error against `ref` and its time."""

    def __init__(self, x: torch.Tensor, ref: torch.Tensor, moved: int, timer: Timer, copy: float):
        self.x, self.ref, self.moved, self.timer, self.copy = x, ref, moved, timer, copy
        self.sweep_rows = SWEEP_ROWS

    def timed(self, run, packs: list, ref: torch.Tensor | None = None) -> dict:  # noqa: ANN001
        entry: dict = {}
        try:
            entry["rel_err"] = rel_err(run(packs[0]), self.ref if ref is None else ref)
            entry["us"] = self.timer.time_us([lambda p=p: run(p) for p in packs])
            if self.timer.cuda:
                entry["pct_copy"] = 100 * self.moved / entry["us"] / 1e3 / self.copy
        except Exception as exc:  # noqa: BLE001 - a kernel that fails is a finding
            entry["error"] = short(exc)
        return entry

    def measure(self, mma: dict[int, list], triton: list | None, modules: list) -> dict:
        """Each kernel once (`_k1`: the weight packed in k order 1, `K_ORDERS`); at
        `SWEEP_ROWS` the rows kernel's launch configurations in both orders."""
        x, rows = self.x, self.x.shape[0]
        cell: dict = {}
        for order, packs in mma.items():
            suffix = f"_k{order}" if order else ""
            cell["mma_rows" + suffix] = self.timed(lambda p: nf4_mma_rows(x, p), packs)
            served = rows_config(rows, packs[0].in_features, packs[0].out_features)
            cell["mma_rows_served" + suffix] = self.timed(
                lambda p, c=served: nf4_mma_rows(x, p, config=c), packs
            )
            for name, config in GEMV_VARIANTS.items() if rows == 1 else ():
                cell[name + suffix] = self.timed(
                    lambda p, c=config: nf4_mma_gemv(x, p, config=c), packs
                )
            if rows == 1:
                self.measure_lora(packs, suffix, cell)
            if order == 1 and rows > 1:  # x staged in shared memory (k order 1 only)
                for config in SHARED_SWEEP:
                    name = "mma_rows_shared_{}_{}_{}".format(*config)
                    cell[name] = self.timed(
                        lambda p, c=config: nf4_mma_rows_shared(x, p, config=c), packs
                    )
        if triton is not None:
            cell["nf4_matmul"] = self.timed(lambda p: nf4_matmul(x, p), triton)
            cell["bnb"] = self.timed(lambda m: bnb_gemv(x, m), modules)
        if self.timer.cuda and rows in self.sweep_rows:
            cell["sweep"] = []
            for order, packs in mma.items():
                for config in SWEEP:
                    entry = self.timed(lambda p, c=config: nf4_mma_rows(x, p, config=c), packs)
                    names = ("warps", "tiles", "per_sm", "decode", "ahead")
                    full = tuple(config) + (1, 0)[len(config) - 3 :]
                    entry["config"] = dict(zip(names, full, strict=True))
                    entry["config"]["k_order"] = order
                    try:
                        chunks, decode = rows_chunks(rows), entry["config"]["decode"]
                        entry["registers"] = registers(
                            *config[:2], chunks, order, decode, entry["config"]["ahead"]
                        )
                    except Exception as exc:  # noqa: BLE001
                        entry["registers_error"] = short(exc)
                    cell["sweep"].append(entry)
        return cell

    def measure_lora(self, packs: list, suffix: str, cell: dict) -> None:
        """`LORA_GEMV_VARIANTS` on one row: t of `LORA_RANK` values and each weight copy its
        own B (a bank's column slice, as `LoraBank` hands it), so B is read from memory as it
        is serving many projections; the reference adds t B.T to the product."""
        x, n = self.x, packs[0].out_features
        t = torch.randn(1, LORA_RANK, device=x.device).bfloat16()
        banks = [(torch.randn(n, 2 * LORA_RANK, device=x.device) * 0.1).bfloat16() for _ in packs]
        pairs = [(p, bank[:, LORA_RANK:]) for p, bank in zip(packs, banks, strict=True)]
        ref = self.ref + t.float() @ pairs[0][1].float().T
        for name, config in LORA_GEMV_VARIANTS.items():
            cell[name + suffix] = self.timed(
                lambda pb, c=config: nf4_mma_gemv(x, pb[0], lora=(t, pb[1]), config=c),
                pairs,
                ref,
            )
        # As the mma routing serves one adapted projection: t = x A.T in its own launch
        # (low_rank_row) then the GEMV, against the GEMV computing t itself (`Shrink`).
        a = (torch.randn(LORA_RANK, x.shape[-1], device=x.device) / x.shape[-1] ** 0.5).bfloat16()
        t_a = F.linear(x, a)
        ref_a = self.ref + t_a.float() @ pairs[0][1].float().T
        cell["lora_two_launches" + suffix] = self.timed(
            lambda pb: nf4_mma_gemv(
                x, pb[0], lora=(low_rank_row(x, a), pb[1]), config=CANDIDATE_GEMV
            ),
            pairs,
            ref_a,
        )
        cell["lora_shrink" + suffix] = self.timed(
            lambda pb: nf4_mma_gemv(x, pb[0], lora=Shrink(a, pb[1]), config=CANDIDATE_GEMV),
            pairs,
            ref_a,
        )


def step_ms(
    shapes: list[dict], model_shapes: list[tuple[int, int]], layers: int, rows_measured: list[int]
) -> dict:
    """Projection time of one decode step per kernel and row count (best sweep config too)."""
    by_shape = {(s["K"], s["N"]): s for s in shapes}
    out: dict = {}
    for rows in rows_measured:
        cells = [by_shape[shape]["rows"][str(rows)] for shape in model_shapes]
        totals: dict = {}
        names = {name for cell in cells for name in cell if name != "sweep"}
        for name in sorted(names):
            times = [cell.get(name, {}).get("us") for cell in cells]
            if all(t is not None for t in times):
                totals[name] = round(layers * sum(times) / 1000, 3)
        best = [
            min((e["us"] for e in cell.get("sweep", []) if "us" in e), default=None)
            for cell in cells
        ]
        if all(b is not None for b in best):
            totals["mma_rows_best_config"] = round(layers * sum(best) / 1000, 3)
        out[str(rows)] = totals
    return out


def wrong_results(shapes: list[dict]) -> list[str]:
    found = []
    for shape in shapes:
        for rows, cell in shape["rows"].items():
            entries = [(name, cell[name]) for name in cell if name.startswith("mma_")]
            entries += [(f"sweep {e['config']}", e) for e in cell.get("sweep", [])]
            for name, entry in entries:
                if "error" in entry or entry.get("rel_err", 1.0) > WRONG:
                    found.append(f"{shape['K']}x{shape['N']} rows={rows} {name}: {entry}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/nf4-mma-rows.json"))
    parser.add_argument("--commit", default="", help="the commit measured (default: git's HEAD)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one model's shapes (--model) at 1, 8 and 32 rows, k order 1, no sweep (a short call)",
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="llama-3.1-8b")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    timer = Timer(cuda=device == "cuda")
    models = SMOKE if args.smoke else MODELS
    plan = Plan(ROWS, sorted(K_ORDERS), SWEEP_ROWS)
    if args.quick:
        models = {args.model: MODELS[args.model]} if not args.smoke else models
        plan = Plan([1, 8, 32], [1], set())
    unique = sorted({shape for shapes, _ in models.values() for shape in shapes})
    copy = timer.copy_gbps()
    commit = (
        args.commit
        or subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    )
    shapes = []
    for k, n in unique:
        shapes.append(measure_shape(k, n, device, timer, copy, plan))
        if timer.cuda:
            torch.cuda.empty_cache()
    result: dict = {
        "bench": "bench/nf4_mma_rows_gpu.py",
        "device": torch.cuda.get_device_name() if timer.cuda else "cpu (smoke)",
        "torch": torch.__version__,
        "commit": commit or None,
        "settings": {
            "rows": plan.rows,
            "k_orders": plan.orders,
            "sweep": SWEEP,
            "sweep_rows": sorted(plan.sweep_rows),
        },  # fmt: skip
        "copy_gbps": copy,
        "shapes": shapes,
        "decode_step_projections_ms": {
            name: step_ms(shapes, model_shapes, layers, plan.rows)
            for name, (model_shapes, layers) in models.items()
        },
    }
    wrong = wrong_results(shapes)
    result["wrong_results"] = wrong
    save(result, args.out)
    for name, steps in result["decode_step_projections_ms"].items():
        print(name)  # noqa: T201
        for rows, totals in steps.items():
            print(f"  rows {rows:>2}: " + ", ".join(f"{k} {v} ms" for k, v in totals.items()))  # noqa: T201
    if wrong:
        print("WRONG RESULTS:", *wrong, sep="\n  ")  # noqa: T201
        raise SystemExit(1)


if __name__ == "__main__":
    main()
