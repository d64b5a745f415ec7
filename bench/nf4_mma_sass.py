"""What the tensor-core NF4 kernels compile to, counted without a GPU: registers, spills and the
machine instructions of each variant's hot loop per 512 bytes of packed weights.

    .venv/bin/pip install nvidia-cuda-nvcc-cu12==12.9.86 nvidia-cuda-cuobjdump==13.5.37 \
        nvidia-cuda-nvdisasm==13.5.37
    .venv/bin/python bench/nf4_mma_sass.py [--out bench/results/nf4-mma-sass.json]

Why: the one-row GEMV issues about as many instructions per byte as an H100 SM can issue while
streaming at full bandwidth (bench/results/profile-serve-llama-hybrid-h100.txt: the GEMVs are
65% of a Llama-3.1-8B decode step at ~40% of bandwidth), so instructions per byte are what a
variant must cut. The source goes through NVRTC (the same compiler `torch.cuda._compile_kernel`
uses on a card, though the card's torch may carry another CUDA version), `ptxas -arch=sm_90`
and `cuobjdump -sass`. The hot loop is the innermost backward branch around the mma; a group is
512 bytes of packed weights (16 rows x 64 k). Static counts: what the card does with them
(latency, issue, memory) is bench/nf4_mma_rows_gpu.py's to measure.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.kernels.nf4_mma import (  # noqa: E402
    CHAIN,
    DECODE,
    DEPTH,
    K_ORDER,
    LEAN,
    WARPS,
    KernelVariant,
)
from app.engine.kernels.nf4_mma_rows import (  # noqa: E402
    ROWS_CONFIG,
    TILES_BY_CHUNKS,
)
from bench.cuda_offline import _nvrtc, ptx, tool  # noqa: E402

GEMV = {  # name -> variant of nf4_mma_gemv
    "serving": KernelVariant(WARPS, DEPTH, DECODE, korder=K_ORDER, chain=CHAIN, lean=LEAN),
    "chain": KernelVariant(WARPS, DEPTH, 1, chain=1),
    "k_order_1": KernelVariant(WARPS, DEPTH, 1, korder=1),
    "wide_table": KernelVariant(WARPS, DEPTH, 2),
    "lean": KernelVariant(WARPS, DEPTH, 1, lean=1),
    "lean_k_order_1_chain": KernelVariant(WARPS, DEPTH, 1, korder=1, chain=1, lean=1),
    "wide_lean_k_order_1_chain": KernelVariant(WARPS, DEPTH, 2, korder=1, chain=1, lean=1),
    "wide_lean_chain_8_warps": KernelVariant(8, DEPTH, 2, korder=1, chain=1, lean=1),
    "prefetch": KernelVariant(WARPS, DEPTH, DECODE, korder=K_ORDER, prefetch=1),
    "wide_lean_k_order_1_chain_prefetch": KernelVariant(
        WARPS, DEPTH, 2, korder=1, chain=1, lean=1, prefetch=1
    ),
    "wide_lean_chain_8_warps_prefetch": KernelVariant(
        8, DEPTH, 2, korder=1, chain=1, lean=1, prefetch=1
    ),
}
SERVED = dict(korder=1, chain=1, lean=1, prefetch=1)  # CANDIDATE_GEMV's build (the mma routing)
GEMV |= {  # the K loop and its switches: sm_90 serves `served_occupy2` with PDL and residual
    "served": KernelVariant(WARPS, DEPTH, 2, **SERVED),
    "served_pdl": KernelVariant(WARPS, DEPTH, 2, **SERVED, pdl=1),
    "served_l2_next": KernelVariant(WARPS, DEPTH, 2, **SERVED, l2_next=1),
    "served_pdl_l2_next_residual": KernelVariant(
        WARPS, DEPTH, 2, **SERVED, pdl=1, l2_next=1, residual=1
    ),
    "served_occupy2": KernelVariant(WARPS, DEPTH, 2, **SERVED, occupy=2),
    "served_occupy2_pdl_l2_next": KernelVariant(
        WARPS, DEPTH, 2, **SERVED, occupy=2, pdl=1, l2_next=1
    ),
    "served_occupy2_pdl_residual": KernelVariant(  # what sm_90 serves
        WARPS, DEPTH, 2, **SERVED, occupy=2, pdl=1, residual=1
    ),
    "served_split_k": KernelVariant(WARPS, DEPTH, 2, **SERVED, split_k=1),
    "served_occupy2_pdl_residual_split_k": KernelVariant(
        WARPS, DEPTH, 2, **SERVED, occupy=2, pdl=1, residual=1, split_k=1
    ),
}
ROWS = {  # name -> variant of nf4_mma_rows
    f"{chunks * 8}_rows{suffix}": KernelVariant(
        ROWS_CONFIG[0],
        tiles=ROWS_CONFIG[1] or TILES_BY_CHUNKS[chunks],
        chunks=chunks,
        korder=korder,
        decode=decode,
    )
    for chunks in (1, 4, 8)
    for suffix, korder, decode in (("", 0, 1), ("_k_order_1", 1, 1), ("_k_order_1_wide", 1, 2))
}


def machine_code(source: str, work: Path) -> tuple[str, str]:
    """(ptxas -v report, cuobjdump -sass listing) of `source` for sm_90."""
    ptxas, cuobjdump, nvdisasm = tool("ptxas"), tool("cuobjdump"), tool("nvdisasm")
    if ptxas is None or cuobjdump is None or nvdisasm is None:
        raise SystemExit(__doc__)
    (work / "k.ptx").write_text(ptx(source))
    report = subprocess.run(
        [str(ptxas), "-arch=sm_90", "-v", "-o", str(work / "k.cubin"), str(work / "k.ptx")],
        capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    listing = subprocess.run(
        [str(cuobjdump), "-sass", str(work / "k.cubin")], capture_output=True, text=True,
        check=True, env={**os.environ, "NVDISASM_PATH": str(nvdisasm.parent)},
    ).stdout  # fmt: skip
    return report, listing


def functions(listing: str) -> dict[str, list[tuple[int, str]]]:
    """Each function's (address, instruction) pairs."""
    out = {}
    for part in listing.split("Function : ")[1:]:
        name = part.split()[0]
        found = re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*?)\s*;", part)
        out[name] = [(int(address, 16), text.strip()) for address, text in found]
    return out


def hot_loop(code: list[tuple[int, str]]) -> list[str]:
    """The smallest backward-branch range that holds an mma: the K loop."""
    best: list[str] = []
    for address, text in code:
        branch = re.search(r"\bBRA\s+0x([0-9a-f]+)", text)
        if branch and int(branch.group(1), 16) < address:
            body = [t for a, t in code if int(branch.group(1), 16) <= a <= address]
            if any("HMMA" in t for t in body) and (not best or len(body) < len(best)):
                best = body
    return best


def opcode(text: str) -> str:
    words = text.split()
    word = words[1] if words[0].startswith("@") else words[0]
    return word.split(".")[0]


def registers(report: str, name: str) -> dict:
    block = report.split(f"Function properties for {name}")[1]
    used = re.search(r"Used (\d+) registers", block)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
    return {
        "registers": int(used.group(1)) if used else None,
        "spill_store_bytes": int(spills.group(1)) if spills else None,
        "spill_load_bytes": int(spills.group(2)) if spills else None,
    }


def count(variant: KernelVariant, name: str, work: Path) -> dict:
    from app.engine.kernels.nf4_mma import kernel_source

    report, listing = machine_code(kernel_source(variant), work)
    loop = hot_loop(functions(listing)[name])
    mix = collections.Counter(opcode(t) for t in loop)
    mma_per_group = 4 * (variant.chunks if name == "nf4_mma_rows" else 1)
    groups = mix["HMMA"] / mma_per_group  # (group, row tile) pairs the loop body covers
    return {
        "variant": asdict(variant),
        **registers(report, name),
        "loop_instructions": len(loop),
        "groups_per_loop": groups,
        "instructions_per_512_bytes": round(len(loop) / groups, 1),
        "loads_shared_per_512_bytes": round(mix["LDS"] / groups, 1),
        "integer_ops_per_512_bytes": round(
            sum(mix[o] for o in ("IMAD", "IADD3", "LOP3", "SHF", "LEA", "PRMT", "MOV")) / groups, 1
        ),
        "mix": dict(mix.most_common(12)),
    }


def versions() -> dict:
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib = _nvrtc()
    if lib is not None:
        lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    out = {"nvrtc": f"{major.value}.{minor.value}"}
    for name in ("ptxas", "cuobjdump", "nvdisasm"):
        path = tool(name)
        text = subprocess.run([str(path), "--version"], capture_output=True, text=True).stdout
        out[name] = text.strip().splitlines()[-1] if path and text else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/nf4-mma-sass.json"))
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        gemv = {name: count(v, "nf4_mma_gemv", work) for name, v in GEMV.items()}
        rows = {name: count(v, "nf4_mma_rows", work) for name, v in ROWS.items()}
    result = {
        "bench": "bench/nf4_mma_sass.py",
        "commit": commit or None,
        "target": "sm_90 (H100/H200), static: no GPU was used",
        "tools": versions(),
        "baseline": "gemv.serving (the kernel serving one row today)",
        "gemv": gemv,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for kind, table in (("nf4_mma_gemv", gemv), ("nf4_mma_rows", rows)):
        print(kind)  # noqa: T201
        for name, row in table.items():
            print(  # noqa: T201
                f"  {name:32} {row['instructions_per_512_bytes']:6.1f} instr/512 B  "
                f"{row['registers']} registers, spills {row['spill_store_bytes']} B"
            )


if __name__ == "__main__":
    main()
