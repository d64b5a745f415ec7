"""The multi-adapter LoRA update of one decode step on a GPU: `add_lora_expand`'s launch
configurations against the path it replaced, on Llama-3.1-8B's groups.

    python bench/lora_expand_gpu.py            # bench/results/lora-expand.json (one GPU)
    python bench/lora_expand_gpu.py --smoke    # the script on CPU, tiny shapes

Per group (q/k/v joined, o, gate/up joined, down) and row count: `baseline`, what a step did
before, each part's `F.linear(x, A)`, `* mask`, `addmm` (three launches a part); `two_launch`,
one GEMM over the group's stacked A then the kernel in each (block_n, warps, block_k) of
`SWEEP`. Times are CUDA-graph replays (`Timer`); every variant's result is checked against the
baseline's. `step_ms` sums a step's 32 layers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

if "--smoke" in sys.argv:  # Triton's CPU interpreter, set before Triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch
import torch.nn.functional as F  # noqa: N812

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.kernels.lora_expand import BLOCK_N, WARPS, _launch  # noqa: E402
from bench.nf4_bench_common import rel_err, save  # noqa: E402
from bench.nf4_gemv_gpu import Timer, short  # noqa: E402

SLOTS, RANK, LAYERS = 4, 64, 32
GROUPS = {  # in_features, part sizes: Llama-3.1-8B
    "qkv": (4096, (4096, 1024, 1024)),
    "o": (4096, (4096,)),
    "gate_up": (4096, (14336, 14336)),
    "down": (14336, (4096,)),
}
SMOKE_GROUPS = {"qkv": (64, (128, 64, 64)), "o": (64, (128,))}
ROWS = [8, 32, 64]
SWEEP = [(BLOCK_N, WARPS, 64), (64, 8, 64), (128, 4, 64), (128, 8, 64), (256, 8, 64), (128, 4, 128)]


def case(width_in: int, sizes: tuple[int, ...], rows: int, device: str) -> dict:
    """Tensors of one group and step: x, each part's stacked A and B, the row mask."""
    torch.manual_seed(rows)
    sr = SLOTS * RANK
    x = torch.randn(rows, width_in, device=device).bfloat16()
    a = [(torch.randn(sr, width_in, device=device) / width_in**0.5).bfloat16() for _ in sizes]
    b = (torch.randn(sum(sizes), sr, device=device) * 0.02).bfloat16()
    mask = torch.zeros(rows, sr, device=device).bfloat16()
    for row in range(rows):
        slot = row % SLOTS
        mask[row, slot * RANK : (slot + 1) * RANK] = 1
    base = torch.randn(rows, sum(sizes), device=device).bfloat16()
    starts = tuple(sum(sizes[:i]) for i in range(len(sizes)))
    return {"x": x, "a": a, "group_a": torch.cat(a), "b": b, "mask": mask, "base": base,
            "starts": starts, "sizes": sizes}  # fmt: skip


def baseline(c: dict) -> torch.Tensor:
    outs = []
    for part, (start, size) in enumerate(zip(c["starts"], c["sizes"], strict=True)):
        low = F.linear(c["x"], c["a"][part]) * c["mask"]
        outs.append(
            torch.addmm(c["base"][:, start : start + size], low, c["b"][start : start + size].t())
        )
    return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


def two_launch(c: dict, out: torch.Tensor, config: tuple[int, int, int]) -> torch.Tensor:
    low = F.linear(c["x"], c["group_a"])
    block_n, warps, block_k = config
    _launch(out, low, c["mask"], c["b"], c["starts"], c["base"], block_n=block_n, warps=warps,
            block_k=block_k)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench/results/lora-expand.json"))
    parser.add_argument("--commit", default="", help="the commit measured (default: git's HEAD)")
    args = parser.parse_args()
    cuda = not args.smoke
    device = "cuda" if cuda else "cpu"
    timer = Timer(cuda=cuda)
    commit = (
        args.commit
        or subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    )
    groups = SMOKE_GROUPS if args.smoke else GROUPS
    results: list[dict] = []
    for name, (width_in, sizes) in groups.items():
        for rows in ROWS[:1] if args.smoke else ROWS:
            c = case(width_in, sizes, rows, device)
            want = baseline(c).float()
            entry: dict = {
                "group": name,
                "rows": rows,
                "baseline_us": timer.time_us([lambda c=c: baseline(c)]),
            }
            entry["sweep"] = []
            for config in SWEEP[:2] if args.smoke else SWEEP:
                if any(s % config[0] for s in c["starts"]):
                    continue
                out = torch.empty_like(c["base"])
                cell: dict = {"block_n": config[0], "warps": config[1], "block_k": config[2]}
                try:
                    cell["rel_err"] = rel_err(two_launch(c, out, config), want)
                    cell["us"] = timer.time_us([lambda c=c, o=out, k=config: two_launch(c, o, k)])
                except Exception as exc:  # noqa: BLE001 - a config that fails is a finding
                    cell["error"] = short(exc)
                entry["sweep"].append(cell)
            results.append(entry)
            done = [(e["block_n"], e["warps"], e["block_k"], e.get("us")) for e in entry["sweep"]]
            print(name, rows, entry["baseline_us"], done)  # noqa: T201
    step: dict = {}
    for rows in sorted({r["rows"] for r in results}):
        mine = [r for r in results if r["rows"] == rows]
        step[str(rows)] = {
            "baseline": round(LAYERS * sum(r["baseline_us"] for r in mine) / 1000, 3)
        }
        for config in SWEEP:
            times = [
                next(
                    (
                        e.get("us")
                        for e in r["sweep"]
                        if (e["block_n"], e["warps"], e["block_k"]) == config
                    ),
                    None,
                )
                for r in mine
            ]
            if all(t is not None for t in times):
                step[str(rows)]["two_launch_{}_{}_{}".format(*config)] = round(
                    LAYERS * sum(times) / 1000, 3
                )
    save({
        "bench": "bench/lora_expand_gpu.py",
        "device": torch.cuda.get_device_name() if cuda else "cpu (smoke)",
        "torch": torch.__version__, "commit": commit or None,
        "settings": {"slots": SLOTS, "rank": RANK, "layers": LAYERS, "rows": ROWS, "sweep": SWEEP},
        "groups": results, "step_ms": step,
        "wrong": [
            f"{r['group']} {r['rows']} {e}"
            for r in results
            for e in r["sweep"]
            if e.get("rel_err", 1) > 2e-2
        ],
    }, args.out)  # fmt: skip
    print(step)  # noqa: T201


if __name__ == "__main__":
    main()
