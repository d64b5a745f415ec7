"""The tensor-core NF4 kernels for 2-64 activation rows (batched decode), over the packed
weights `nf4_mma` makes for its one-row GEMV: the mma's eight columns carry eight activation
rows each, so a decode step of many streams decodes each weight fragment once, as one stream
does. `nf4_mma_rows` (its launch per row count and shape from `rows_config`) serves the `mma`
routing; `nf4_mma_rows_shared` stages x in shared memory for every warp of a block and waits
for a card to measure it. Both kernels live in nf4_mma.cu beside the GEMV.
"""

from __future__ import annotations

import torch

from app.engine.kernels.availability import mma_available, sm_count
from app.engine.kernels.nf4_format import code_tables
from app.engine.kernels.nf4_mma import (
    GROUP,
    TILE_ROWS,
    KernelVariant,
    MmaNF4,
    _dynamic_shared,
    _kernel,
    dequantize_mma,
)

MAX_ROWS = 64  # nf4_mma_rows: eight chunks of the mma's eight columns
ROWS_CONFIG = (8, 0, 2)  # nf4_mma_rows without a config: warps per block, row tiles per warp
# (0: by chunks, `TILES_BY_CHUNKS`), blocks per SM; the routing launches `rows_config`'s
TILES_BY_CHUNKS = {1: 4, 2: 2, 4: 2, 8: 1}
"""Row tiles per warp for each chunk count: more tiles share each load of x, more chunks share
each decoded fragment; both cost registers (tiles x chunks x 4 accumulators), and 64 rows with
two tiles take all 255 (nf4-mma-sass.json: 4/1 and 2/2 use 64 and 94, 2/4 128, 1/8 98)."""
CANDIDATE_ROWS = (*ROWS_CONFIG, 2)  # wide table: 17-32 rows on wide weights (rows_config)


def rows_config(rows: int, in_features: int, out_features: int) -> tuple[int, ...]:
    """The rows kernel's launch configuration (warps, row tiles per warp, blocks per SM,
    decode[, ahead]) for a decode step of `rows` rows through an (out_features, in_features)
    weight, by the sweeps on an H100 (bench/results/nf4-mma-rows-h100.json and
    nf4-mma-rows-ahead-h100.json, k order 1). The 64 KB table (decode 2) only pays at 17-32
    rows on wide weights: at 8 rows it took 1.5-3.4x as long as the 32 KB one. Loading the
    next group's weights ahead (`ahead`) pays at 8 rows (Llama-3.1-8B's down projection 18.8
    against 21.5 us) and costs at 32, where the registers it takes are missed. Narrow weights
    want more warps per tile, 64 rows fewer warps."""
    chunks = rows_chunks(rows)
    narrow = out_features <= 4096
    if chunks == 1:
        if out_features < 14336:
            return (16, 1, 2, 1, 1)
        return (8, 0, 2, 1) if in_features <= 4096 else (8, 2, 3, 1, 1)
    if chunks == 2:
        return (8, 0, 2, 1)
    if chunks == 4:
        return (8, 1, 2, 1) if narrow and in_features <= 4096 else CANDIDATE_ROWS
    if narrow and in_features <= 4096:
        return (8, 1, 2, 1, 1)
    return (4, 1, 4, 1) if in_features <= 4544 else (8, 2, 3, 1)


def rows_chunks(rows: int) -> int:
    """8-row chunks the rows kernel is compiled for: 1, 2, 4 or 8 (fewer variants to compile;
    rows past the last are zeros the kernel does not store)."""
    return 1 << max(0, (rows - 1) // 8).bit_length()


def reference_rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """What the rows kernel computes, in torch: fp32 products rounded once to x's dtype."""
    return (x.float() @ weight.float().T).to(x.dtype)


def nf4_mma_rows(
    x: torch.Tensor, weight: MmaNF4, *, config: tuple[int, ...] | None = None
) -> torch.Tensor:
    """`x @ W.T` for 2 to `MAX_ROWS` bf16 activation rows (batched decode), in bf16 with fp32
    accumulation, from the same packed weight `nf4_mma_gemv` reads: the rows share each
    decoded weight fragment as the mma's eight columns, so a step of many streams decodes the
    weights once, as one stream does. No epilogue: the batched forwards add the LoRA bank's
    updates after it.

    On CUDA one kernel launch (capturable in a CUDA graph after the first call, which
    compiles it); elsewhere torch dequantizes and multiplies.

    Args:
        x: (..., in_features) with at most `MAX_ROWS` rows.
        config: (warps per block, row tiles per warp and loaded group, blocks per SM[,
            decode: 1 the 32 KB table, 2 the 64 KB one[, ahead: 1 each warp loads its next
            group's weights while it multiplies this one's]]); by default `ROWS_CONFIG`.

    Raises:
        ValueError: the rows or their width do not fit.
    """
    flat = _rows_of(x, weight)
    if not mma_available(x.device):
        return _reference(x, flat, weight)
    rows = flat.shape[0]
    out = torch.empty(rows, weight.out_features, dtype=torch.bfloat16, device=x.device)
    given = tuple(config or ROWS_CONFIG)
    if not 3 <= len(given) <= 5:
        raise ValueError("config is (warps, tiles, per_sm[, decode[, ahead]])")
    warps, tiles_per_set, per_sm, decode, ahead = given + (1, 0)[len(given) - 3 :]
    tiles_per_set = tiles_per_set or TILES_BY_CHUNKS[rows_chunks(rows)]
    tiles = weight.out_features // TILE_ROWS
    sets = -(-tiles // tiles_per_set)
    blocks = min(sets, per_sm * sm_count(x.device))
    variant = KernelVariant(
        warps, decode=decode, tiles=tiles_per_set, chunks=rows_chunks(rows),
        korder=weight.k_order, ahead=ahead,
    )  # fmt: skip
    _kernel(x.device.index or 0, variant, "nf4_mma_rows")(
        grid=(blocks, 1, 1),
        block=(32 * warps, 1, 1),
        shared_mem=_dynamic_shared(variant, tiles_per_set * 16 * variant.chunks * 8),
        args=[
            weight.words, weight.scales, flat, out, weight.in_features // GROUP,
            code_tables(x.device)[1], rows, tiles,
        ],
    )  # fmt: skip
    return out.reshape(*x.shape[:-1], weight.out_features)


SHARED_ROWS_CONFIG = (8, 1, 2)
"""nf4_mma_rows_shared: (warps per block, row tiles per warp, work items per SM: sets of
warps x tiles row tiles times slices of K, the slices chosen so the grid has about this many
per SM). A first choice from the register counts (`bench/nf4_mma_sass.py`: 114 registers and
no spills at 32 rows, 128 with two tiles a warp); the best of the configurations
`bench/nf4_mma_rows_gpu.py` timed on an H100 for Llama-3.1-8B's widest weights."""


def nf4_mma_rows_shared(
    x: torch.Tensor, weight: MmaNF4, *, config: tuple[int, int, int] | None = None
) -> torch.Tensor:
    """`nf4_mma_rows` with each group of the activations staged in shared memory once per
    block and read there by every warp, whose warps split the row tiles instead of K: at 32
    rows the rows kernel's warps each load x from L2 for every group, four times the bytes of
    the weights they multiply. Slices of K spread narrow weights over every SM; their fp32
    partial sums meet in a workspace, added and rounded once by each set's last slice.

    Served where `nf4_routing.SHARED_ROWS_FROM` and the weight bounds beside it say (serving
    32 streams it helped Llama-3.1-8B and not Falcon-7B, bench/results/
    serve-gpu-*-shared-h100.json); `bench/nf4_mma_rows_gpu.py` times it beside the rows kernel.

    Raises:
        ValueError: the rows or their width do not fit, or the weight is not in k order 1.
    """
    flat = _rows_of(x, weight)
    if not mma_available(x.device):
        return _reference(x, flat, weight)
    if weight.k_order != 1:
        raise ValueError("nf4_mma_rows_shared reads x in k order 1: pack with k_order=1")
    rows = flat.shape[0]
    warps, tiles_per_warp, _ = config = config or SHARED_ROWS_CONFIG
    out = torch.empty(rows, weight.out_features, dtype=torch.bfloat16, device=x.device)
    tiles = weight.out_features // TILE_ROWS
    groups = weight.in_features // GROUP
    sets, ksplit, slots = _shared_plan(weight, x.device, config)
    partials, sems = _rows_workspace(x.device, ksplit * rows * weight.out_features, sets)
    chunks = rows_chunks(rows)
    variant = KernelVariant(
        warps, decode=1 if chunks <= 4 else 0, tiles=tiles_per_warp, chunks=chunks, korder=1
    )
    _kernel(x.device.index or 0, variant, "nf4_mma_rows_shared")(
        grid=(min(sets * ksplit, slots), 1, 1),
        block=(32 * warps, 1, 1),
        args=[
            weight.words, weight.scales, flat, out, groups, code_tables(x.device)[1], rows,
            tiles, ksplit, partials, sems,
        ],
    )  # fmt: skip
    return out.reshape(*x.shape[:-1], weight.out_features)


def _shared_plan(
    weight: MmaNF4, device: torch.device, config: tuple[int, int, int]
) -> tuple[int, int, int]:
    """(sets of row tiles, slices of K, grid slots) of an `nf4_mma_rows_shared` launch: the
    slices chosen so that sets x slices is about the slots (`config`'s items per SM)."""
    warps, tiles_per_warp, per_sm = config
    sets = -(-(weight.out_features // TILE_ROWS) // (warps * tiles_per_warp))
    slots = per_sm * sm_count(device)
    return sets, max(1, min(weight.in_features // GROUP, round(slots / sets))), slots


def prepare_rows_shared(weight: MmaNF4) -> None:
    """Make the device's `nf4_mma_rows_shared` workspace for `weight` at 64 rows now, while no
    graph is being captured (the routing calls this when it packs the weight)."""
    device = weight.words.device
    sets, ksplit, _ = _shared_plan(weight, device, SHARED_ROWS_CONFIG)
    _rows_workspace(device, ksplit * MAX_ROWS * weight.out_features, sets)


_ROWS_WORKSPACES: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
_OUTGROWN: list[tuple[torch.Tensor, torch.Tensor]] = []
"""Workspaces a bigger one replaced: kept, since graphs captured earlier still use them."""
ROWS_WORKSPACE_FLOATS = 4 << 20
"""The partial sums' first size (16 MB): Llama-3.1-8B's and Falcon-7B's largest need at 64 rows
is about 2.4 M floats."""


def _rows_workspace(
    device: torch.device, floats: int, sets: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A device's partial sums and per-set counters for `nf4_mma_rows_shared` (one launch at
    a time on the decode stream uses them; the counters are zero between launches), grown to
    fit, and only outside a graph capture, whose private memory goes with the graph."""
    index = device.index or 0
    held = _ROWS_WORKSPACES.get(index)
    if held is None or held[0].numel() < floats or held[1].numel() < sets:
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("nf4_mma_rows_shared: call it once before capturing a graph")
        if held is not None:
            _OUTGROWN.append(held)
        size = max(floats, ROWS_WORKSPACE_FLOATS, held[0].numel() if held else 0)
        count = max(sets, 4096, held[1].numel() if held else 0)
        held = (
            torch.empty(size, dtype=torch.float32, device=device),
            torch.zeros(count, dtype=torch.int32, device=device),
        )
        _ROWS_WORKSPACES[index] = held
    return held


def _rows_of(x: torch.Tensor, weight: MmaNF4) -> torch.Tensor:
    """x as (rows, in_features) for either kernel: contiguous, bf16 where a kernel runs.

    Raises:
        ValueError: the rows or their width do not fit, or a kernel would get another dtype.
    """
    flat = x.reshape(-1, x.shape[-1])
    if x.shape[-1] != weight.in_features or not 1 <= flat.shape[0] <= MAX_ROWS:
        raise ValueError(f"nf4_mma_rows takes 1 to {MAX_ROWS} rows of {weight.in_features} values")
    if mma_available(x.device) and x.dtype != torch.bfloat16:
        raise ValueError("the tensor-core kernels take bf16 activations")
    return flat.contiguous()


def _reference(x: torch.Tensor, flat: torch.Tensor, weight: MmaNF4) -> torch.Tensor:
    """Where no kernel runs: torch dequantizes and multiplies, in x's leading dims."""
    return reference_rows(flat, dequantize_mma(weight)).reshape(*x.shape[:-1], weight.out_features)
