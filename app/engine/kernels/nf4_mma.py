"""NF4 weight x one bf16 row on tensor cores (CUDA C++ compiled at run time), for batch-1 decode.

`nf4_gemv` (Triton, CUDA cores) spends about seven instructions per weight: decode a nibble to
a value, widen it to fp32, one FMA; on an H200 it reaches 22-32 % of copy bandwidth. Here each
warp decodes its nibbles straight into the register layout of a tensor-core operand
(`mma.sync.m16n8k16`, bf16 in, fp32 accumulate): each byte (two nibbles) is one lookup in a
shared-memory table of bf16 pairs, replicated per lane so a warp's 32 lookups never share a
bank, and one `mma` multiplies 256 weights. The activation row is the mma's other operand
(column 0 of 8; the rest zero), so the tensor cores do eight times the useful work, which they
have to spare. Byte permutes on register constants (`prmt`, `decode=0`) were 10-35 % slower.

Measured on H200 hosts (bench/results/nf4-mma.json is the latest): 11.3-11.4 us on 4544x4544
and 25.8-31.4 us on the MLP shapes with two blocks per SM (`PER_SM`: each block fills the
table once for several row tiles; one block per tile was 1-13 % slower), 2.55-2.57 against the
Triton GEMV's 2.79-2.81 ms of GEMVs per Falcon-7B token; 23-40 % of copy bandwidth (53
registers a thread: no third block of 16 warps fits an SM's registers), where a plain read of
the same bytes reaches 55-75 %. What is left is decode and mma issue: loads alone took 16 us of
the 38 on 18176x4544 before the table. Nor is it latency: a variant (commit 0c7fd2a, reverted)
that kept each warp's next six groups in flight as TMA bulk copies into shared memory gave the
same answers but was 5-8 % slower than register loads at the same occupancy (one block of 16
warps per SM: 15.4 against 14.7 us, 40.8 against 37.9); two groups ahead in registers at the
same occupancy (64 registers) was 3 % slower, and deeper pipelines at 4-8 warps per block
8-56 % slower. The optional epilogue (LoRA update, GELU) costs 1-2 us and saves the 4-5 us of
a separate addmm and GELU.
Layout (`pack_mma` from a bitsandbytes `Linear4bit`): rows in tiles of 16, K in groups of 64
(the NF4 scale block). For row tile r and group g, the 32 lanes of a warp each read 16 bytes:
four words, one per 16-wide k step, each holding the lane's eight nibbles of the mma A fragment
in register order (rows lane/4 and lane/4 + 8, columns 2(lane%4) + {0, 1, 8, 9}): 512
contiguous bytes per (group, tile). Groups are the outer dimension, so the blocks running at
once (one row tile each, its warps splitting K) read neighbouring bytes, as a copy does; a
tile-major order had thousands of warps each streaming its own distant region. Scales: fp16,
16 per (group, tile).

`nf4_mma_rows.nf4_mma_rows` (its own module) serves 2-64 rows (batched decode) from the same
packed words: the mma's eight
columns, unused by the GEMV, carry eight activation rows, so each decoded fragment serves up to
64 rows in 1-8 chunks, where the Triton `nf4_matmul` decodes every weight with a table load per
element. Its warps split K; each decodes a group's fragments for `TILES` neighbouring row
tiles once and multiplies them with every chunk of x, and the warps' fp32 sums meet in shared
memory; `rows_config` picks its launch by row count and shape, from the H100 sweeps
(bench/results/nf4-mma-rows-*h100.json), `AHEAD` loading each warp's next group during this
one's math where that paid (8 rows). `nf4_mma_rows_shared` stages each group of x in shared
memory for every warp of a block instead (at 32 rows the rows kernel's warps re-read x from L2
at four times the weights' bytes); it has yet to run on a card, so no routing serves it.

The GEMV serves in the `CANDIDATE_GEMV` build (the `mma` routing, `auto`'s choice): the k order
1 packing (`K_ORDERS`: each lane's x for a group is 32 contiguous bytes), `CHAIN` (a group's
four mma into one accumulator), `decode=2` (a 64 KB table whose address is one byte permute),
`LEAN` (running pointers, two register buffers in turn) and `PREFETCH` (each tile's LoRA t and
B rows in registers when its K loop starts): 58.5 machine instructions per 512 bytes against
144 before (bench/nf4_mma_sass.py counts them without a card). Two more switches are not
served: `SHRINK` (the grid computes LoRA's t = x A.T itself), measured slower serving (see
`nf4_routing.GEMV_SHRINKS`), and `SPLIT_K` (stream-K: each block an equal run of the (tile,
group) pairs), no faster serving Falcon-7B. `OCCUPY` 2 (the served build) keeps the registers
to 64, so that two blocks share each SM. `PDL` (on where `pdl.runs`) builds the GEMV to be
launched as a programmatic dependent of the kernel before it: the decode table, the first
group's weights and L2 requests for the rest of its first tile go out before
`griddepcontrol.wait`, x after.

The kernel source is compiled once per device with NVRTC through `torch.cuda._compile_kernel`
(no nvcc, no headers: plain C++ and inline PTX). Off CUDA, `nf4_mma_gemv` dequantizes and
multiplies in torch, and `dequantize_mma` undoes the layout, which is how the CPU tests check
the packing against bitsandbytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels import pdl
from app.engine.kernels.availability import mma_available, sm_count
from app.engine.kernels.gemv_grid import (
    MAX_SHRINK,
    has_shrink_workspace,
    shrink_workspace,
    split_k_workspace,
    splits_k,
)
from app.engine.kernels.nf4_format import (
    FP16_BIG,
    FP16_TINY,
    NF4_CODE,
    bf16_code_bits,
    code_tables,
    nf4_codes,
    nf4_state,
    reference_row,
)

TILE_ROWS = 16
DEPTH = 1  # groups each warp loads ahead
DECODE = 1  # the GEMV's decode: 1 the 32 KB table (2: `WIDE_TABLE_BYTES`, 0: byte permutes)
CHAIN = 0  # 1: a group's four mma chained into one accumulator (CANDIDATE_GEMV)
LEAN = 0  # 1: the GEMV walks K with running pointers and two buffers in turn (CANDIDATE_GEMV)
PREFETCH = 0  # 1: the GEMV loads each tile's epilogue t and B before its K loop (CANDIDATE_GEMV)
WIDE_TABLE_BYTES = 256 * 64 * 4  # decode 2's table: one address op per lookup (CANDIDATE_GEMV)
WARPS = 16  # per block (one 16-row tile; they split K): best of 4, 8, 16 on two H200s
PER_SM = 2  # blocks per SM, each serving several row tiles (0: one block per tile); 2 beat
# one block per tile by 1-13 % per Falcon-7B shape on an H200 (nf4-mma.json's sweep)
GROUP = 64  # k per scale: one lane's 16 bytes hold its four 16-wide k steps of a group
K_ORDERS = {
    0: "PTX: lane (g, t), step j, half h holds k = 16 j + 2 t + 8 h (+1) of its group",
    1: "lane-contiguous: k = 16 t + 4 j + 2 h (+1), so lane t's x is 16 neighbouring values",
}
"""How the packing orders k within a 64-wide group. Any order gives the same sums as long as x
is read in the same one: order 1 lets each lane load its x with two 16-byte loads, where order 0
takes eight 4-byte loads (and zeroing) per group, a fifth of the GEMV's instructions."""
K_ORDER = 0  # `pack_mma`'s default; the `mma` routing packs in CANDIDATE_K_ORDER
CANDIDATE_K_ORDER = 1
CANDIDATE_GEMV = (WARPS, DEPTH, 2, PER_SM, 1, 1, 1, 2, 0)  # wide table, chained mma, lean
# loop, epilogue prefetched (a Llama-3.1-8B decode step's GEMVs with LoRA in 2.78 ms instead of
# 3.05, nf4-mma-rows-h100.json), registers for two blocks an SM, no l2_next
"""The build the `mma` routing (the default where its copy fits) serves one row with: 60.0
instead of 144 machine instructions per 512 bytes (bench/nf4_mma_sass.py), in 64 registers so
that `PER_SM` blocks run on each SM at once. The SHRINK code (b066b7e) had taken the build
from 64 to 88 registers, one block an SM: replayed alone on one H100, every Llama-3.1-8B and
Falcon-7B weight took 20-27 % less time with two (nf4-mma-rows-quick-h100.json,
nf4-mma-rows-falcon-h100.json: 17.3 against 22.8 us for 14,336 x 4,096, 28.6 against 35.1
for 18,176 x 4,544); `l2_next` gained nothing on top. End to end it served one stream 33 %
faster on Llama-3.1-8B + LoRA and 30 % on Falcon-7B
(bench/results/serve-gpu-{llama,falcon}-occupy2-h100.json)."""
_SOURCE_FILE = Path(__file__).with_suffix(".cu")
"""The kernel's CUDA C++, a template `kernel_source` fills in."""


@dataclass(frozen=True)
class MmaNF4:
    """One Linear4bit's weight in `nf4_mma_gemv`'s layout (module docstring)."""

    words: torch.Tensor  # int32 (K/64, N/16, 32 lanes, 4 words), contiguous
    scales: torch.Tensor  # fp16 (K/64, N/16, 16), contiguous
    out_features: int
    in_features: int
    k_order: int = 0  # `K_ORDERS`: which k of its group each fragment position holds

    @property
    def nbytes(self) -> int:
        """Bytes one GEMV reads: packed weights plus scales."""
        return self.words.numel() * 4 + self.scales.numel() * 2


def mma_reason(module) -> str | None:
    """Why `pack_mma` cannot take this Linear4bit, or None when it can. A bias does not matter:
    the kernels compute x W.T, and the routing adds the bias after them (and then offers no
    fused epilogue, which would add the LoRA update before it)."""
    try:
        _, n, k, group = nf4_state(module, GROUP, per_word=8)
    except ValueError as exc:
        return str(exc)
    if n % TILE_ROWS or k % GROUP or group != GROUP:
        return f"needs out_features % {TILE_ROWS} == 0 and 64-weight scale blocks"
    return None


def pack_mma(module, k_order: int = K_ORDER) -> MmaNF4 | None:
    """Repack a bitsandbytes NF4 `Linear4bit` for `nf4_mma_gemv`, or None when its shape
    (`mma_reason`) or its scales (outside fp16's normal range) do not fit the kernel.

    Copies what it needs and leaves the module serving as before. Call it once at load.
    `k_order` is one of `K_ORDERS`.
    """
    if mma_reason(module) is not None:
        return None
    codes, absmax = nf4_codes(module)
    n, k = codes.shape[0], codes.shape[1] * 2
    blocksize = int(module.weight.quant_state.blocksize)
    idx = torch.stack([codes >> 4, codes & 0xF], dim=-1).reshape(n, k).to(torch.int64)
    # row = 16 r + 8 h + g, k = 64 q + 16 j + 8 c + 2 t + e (order 0; order 1: 64 q + 16 t +
    # 4 j + 2 c + e)  ->  lane 4 g + t, word j, nibble 4 c + 2 h + e (the A fragment's order).
    if k_order == 0:
        idx = idx.view(n // 16, 2, 8, k // 64, 4, 2, 4, 2)  # r h g q j c t e
        nibbles = idx.permute(0, 3, 2, 6, 4, 5, 1, 7)
    elif k_order == 1:
        idx = idx.view(n // 16, 2, 8, k // 64, 4, 4, 2, 2)  # r h g q t j c e
        nibbles = idx.permute(0, 3, 2, 4, 5, 6, 1, 7)
    else:
        raise ValueError(f"k_order must be one of {sorted(K_ORDERS)}")
    nibbles = nibbles.reshape(n // 16, k // 64, 32, 4, 8)
    shifts = torch.arange(0, 32, 4, device=idx.device, dtype=torch.int64)
    words = (nibbles << shifts).sum(dim=-1)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)

    starts = torch.arange(n, device=idx.device)[:, None] * k
    starts = starts + torch.arange(0, k, GROUP, device=idx.device)[None, :]
    scales = absmax[starts // blocksize]  # (N, K/64)
    nonzero = scales[scales != 0].abs()
    if nonzero.numel() and (nonzero.min() < FP16_TINY or nonzero.max() > FP16_BIG):
        return None
    scales = scales.view(n // 16, 16, k // 64).permute(2, 0, 1).to(torch.float16)
    return MmaNF4(words.transpose(0, 1).contiguous(), scales.contiguous(), n, k, k_order)


def concat_mma(parts: list[MmaNF4]) -> MmaNF4:
    """Several projections of the same input (q, k, v) as one packed weight, their outputs
    side by side: row tiles are the inner dimension of both the words and the scales, so this
    is one concatenation each, and a single launch streams all three. Copies; the parts can be
    dropped after.

    Raises:
        ValueError: the parts differ in input width or packing order.
    """
    first = parts[0]
    if any(p.in_features != first.in_features or p.k_order != first.k_order for p in parts):
        raise ValueError("concatenated projections need the same input width and k order")
    return MmaNF4(
        torch.cat([p.words for p in parts], dim=1),
        torch.cat([p.scales for p in parts], dim=1),
        sum(p.out_features for p in parts),
        first.in_features,
        first.k_order,
    )


def dequantize_mma(weight: MmaNF4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (out_features, in_features) weight the packed words stand for."""
    n, k = weight.out_features, weight.in_features
    shifts = torch.arange(0, 32, 4, device=weight.words.device, dtype=torch.int32)
    nibbles = (weight.words.transpose(0, 1)[..., None] >> shifts) & 0xF  # (N/16, K/64, ...)
    idx = nibbles.view(n // 16, k // 64, 8, 4, 4, 2, 2, 2)  # r q g t j c h e
    if weight.k_order == 0:  # k = 64 q + 16 j + 8 c + 2 t + e
        idx = idx.permute(0, 6, 2, 1, 4, 5, 3, 7).reshape(n, k)
    else:  # k = 64 q + 16 t + 4 j + 2 c + e
        idx = idx.permute(0, 6, 2, 1, 3, 4, 5, 7).reshape(n, k)
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=idx.device)
    scales = weight.scales.float().permute(1, 2, 0).reshape(n, k // GROUP)
    values = code[idx.long()].view(n, k // GROUP, GROUP) * scales[..., None]
    return values.view(n, k).to(dtype)


class Shrink(NamedTuple):
    """A LoRA update whose low-rank activations the GEMV computes itself (`nf4_mma_gemv`):
    `a` the parts' A stacked (parts x R, in_features), rows contiguous; `b` as in `lora`."""

    a: torch.Tensor
    b: torch.Tensor


def nf4_mma_gemv(
    x: torch.Tensor,
    weight: MmaNF4,
    *,
    lora: tuple[torch.Tensor, torch.Tensor] | Shrink | None = None,
    gelu: bool = False,
    config: tuple[int, ...] | None = None,
    splits: tuple[int, ...] = (),
    gelu_from: int = 0,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """`x @ W.T` for ONE bf16 activation row, in bf16 (fp32 accumulation), optionally plus a
    LoRA update, through GELU and plus `residual` (a block's x: one launch fewer per
    residual add), all before the one rounding.

    On CUDA one kernel launch, capturable in a CUDA graph after the first call (which compiles
    the kernel); elsewhere torch dequantizes and multiplies.

    Args:
        lora: (t, b): the row's low-rank activations t = x A.T (R values, bf16) and B with
            the scale folded in, (out_features, R) bf16 with unit column stride (a column
            slice of `LoraBank`'s stacked B is fine): adds t B.T. A `Shrink` (A, B) instead
            has the kernel compute t itself, spread over the grid before the K loop (one
            launch fewer per projection, `SHRINK` in the .cu), where it can (`_shrinks`);
            elsewhere t is computed first, rounded to bf16 like the launch it replaces.
        splits: for a weight that is several projections side by side (`concat_mma`), the
            output rows where the second (and third) begins, at most two: t then holds R
            values per projection, and each row's update reads its own projection's.
        gelu: apply exact (erf) GELU to the result (its rows from `gelu_from` on: a joined
            weight whose last part is an MLP's up projection).
        config: (warps per block, groups each warp loads ahead (one with lean), decode 0 =
            byte permutes / 1 = shared-memory table / 2 = the 64 KB table addressed by one
            byte permute (`WIDE_TABLE_BYTES`), blocks per SM: 0 = one block per row tile,
            else that many blocks per SM each serving several tiles[, chain: 1 = a group's
            four mma into one accumulator[, lean: 1 = running pointers and two buffers in
            turn[, prefetch: 1 = the epilogue's t and B loaded before the K loop[, occupy:
            blocks an SM the registers leave room for[, l2_next: 1 = with lean, each tile
            asks L2 for the block's next tile[, split_k: 1 = with lean, stream-K where the
            tiles divide unevenly among the SMs (`splits_k`)]]]]]]) for benchmarks; by
            default `WARPS`, `DEPTH`, `DECODE`, `PER_SM`, `CHAIN`, `LEAN`, `PREFETCH`, 1, 0, 0.

    Raises:
        ValueError: x is not one row of in_features values.
    """
    if x.shape[-1] != weight.in_features or x.numel() != weight.in_features:
        raise ValueError(f"nf4_mma_gemv takes one row of {weight.in_features} values")
    lead = x.shape[:-1]
    if len(splits) > 2 or list(splits) != sorted(splits) or any(s % TILE_ROWS for s in splits):
        raise ValueError(f"splits are at most two ascending multiples of {TILE_ROWS}")
    row = x.reshape(-1)
    settings = gemv_settings(config)
    warps, depth, decode, per_sm, chain, lean, prefetch, occupy, l2_next, split_k = settings
    shrink = None
    if isinstance(lora, Shrink):
        if _shrinks(x, weight, lora, per_sm, len(splits) + 1):
            shrink, lora = lora, None
        else:
            lora = (F.linear(row, lora.a), lora.b)  # t as low_rank_row gives it, in bf16
    t, b, rank = row, row, 0  # placeholders the kernel never reads when rank is 0
    if shrink is not None:
        b, rank = shrink.b, shrink.a.shape[0] // (len(splits) + 1)
        if b.shape != (weight.out_features, rank) or b.stride(1) != 1 or b.dtype != x.dtype:
            raise ValueError("lora B must be (out_features, rank) bf16 with unit column stride")
    elif lora is not None:
        t, b = lora[0].reshape(-1).contiguous(), lora[1]
        rank = t.numel() // (len(splits) + 1)
        if t.numel() != rank * (len(splits) + 1):
            raise ValueError("lora t must hold the same rank for each projection of the splits")
        if b.shape != (weight.out_features, rank) or b.stride(1) != 1 or b.dtype != x.dtype:
            raise ValueError("lora B must be (out_features, rank) bf16 with unit column stride")
    if residual is not None and (
        residual.numel() != weight.out_features or residual.dtype != x.dtype
    ):
        raise ValueError(f"residual must be the {weight.out_features} outputs in x's dtype")
    if not mma_available(x.device):
        dense = dequantize_mma(weight)
        return reference_row(x, dense, lora, gelu, splits, gelu_from, residual)
    if x.dtype != torch.bfloat16:
        raise ValueError("the tensor-core GEMV takes bf16 activations")
    row = row.contiguous()
    kept = row if residual is None else residual.reshape(-1).contiguous()
    out = torch.empty(weight.out_features, dtype=torch.bfloat16, device=x.device)
    split1, split2 = (*splits, weight.out_features, weight.out_features)[:2]
    tiles = weight.out_features // TILE_ROWS
    blocks = min(tiles, per_sm * sm_count(x.device)) if per_sm else tiles
    resident = occupy * sm_count(x.device)  # blocks the registers let run at once
    k_sums, k_counts = row, row  # unread unless the kernel splits K
    streams = split_k and lean and shrink is None and splits_k(tiles, resident)
    if streams and (workspace := split_k_workspace(weight, resident)) is not None:
        blocks, (k_sums, k_counts) = resident, workspace
    else:
        streams = False
    variant = KernelVariant(
        warps, depth, decode, korder=weight.k_order, chain=chain, lean=lean, prefetch=prefetch,
        shrink=int(shrink is not None), occupy=occupy, residual=int(residual is not None),
        pdl=int(pdl.runs(x.device)), l2_next=l2_next, split_k=int(streams),
    )  # fmt: skip
    a, t_sum, sync, shrink_rows = row, row, row, 0  # unread unless the kernel shrinks
    if shrink is not None:
        a, shrink_rows = shrink.a, shrink.a.shape[0]
        t_sum, sync = shrink_workspace(weight)
    kernel = _kernel(x.device.index or 0, variant)
    args: list[torch.Tensor | int | float] = [
        weight.words, weight.scales, row, out, weight.in_features // GROUP,
        code_tables(x.device)[1], t, b, rank, b.stride(0) if rank else 0,
        gelu_from if gelu else weight.out_features, tiles,
        split1, split2, a, t_sum, sync, shrink_rows, kept, k_sums, k_counts,
    ]  # fmt: skip
    launch = pdl.launch if variant.pdl else _torch_launch
    launch(kernel, (blocks, 1, 1), (32 * warps, 1, 1), args, _dynamic_shared(variant, warps * 16))
    return out.reshape(*lead, weight.out_features)


def _shrinks(x: torch.Tensor, weight: MmaNF4, shrink: Shrink, per_sm: int, parts: int) -> bool:
    """Whether the kernel can compute t itself: on CUDA where the tensor-core kernels run, a
    grid of blocks that are all resident at once (`per_sm` blocks an SM, one or two), A of
    bf16 rows whose 16-byte loads are aligned, t small enough for shared memory, and the
    weight's workspace made (not while a graph is being captured: `shrink_workspace`)."""
    a = shrink.a
    ready = has_shrink_workspace(weight)
    return (
        x.is_cuda
        and mma_available(x.device)
        and (ready or not torch.cuda.is_current_stream_capturing())
        and 1 <= per_sm <= 2
        and a.dtype == torch.bfloat16
        and a.dim() == 2
        and a.shape[1] == x.shape[-1]
        and a.stride(1) == 1
        and a.stride(0) == a.shape[1]
        and a.data_ptr() % 16 == 0
        and x.data_ptr() % 16 == 0
        and a.shape[0] % parts == 0
        and a.shape[0] <= MAX_SHRINK
    )


def gemv_settings(
    config: tuple[int, ...] | None,
) -> tuple[int, int, int, int, int, int, int, int, int, int]:
    """(warps, depth, decode, per_sm, chain, lean, prefetch, occupy, l2_next, split_k) from a
    GEMV `config`, defaults filled in."""
    defaults = (WARPS, DEPTH, DECODE, PER_SM, CHAIN, LEAN, PREFETCH, 1, 0, 0)
    given = tuple(config or ())
    if len(given) > len(defaults) or (given and len(given) < 4):
        raise ValueError(
            "config is (warps, depth, decode, per_sm"
            "[, chain[, lean[, prefetch[, occupy[, l2_next[, split_k]]]]]])"
        )
    warps, depth, decode, per_sm, chain, lean, prefetch, occupy, l2_next, split_k = (
        given + defaults[len(given) :]
    )
    return warps, depth, decode, per_sm, chain, lean, prefetch, occupy, l2_next, split_k


def _dynamic_shared(variant: KernelVariant, sums: int) -> int:
    """Dynamic shared memory a launch needs: decode 2's table and, after it, the `sums` fp32
    partial sums the kernel keeps there (it has no static shared memory then), and with
    `shrink` the t values and a flag."""
    extra = (MAX_SHRINK + 1 if variant.shrink else 0) + variant.split_k  # + split_k's flag
    return WIDE_TABLE_BYTES + 4 * (sums + extra) if variant.decode == 2 else 0


@dataclass(frozen=True)
class KernelVariant:
    """The compile-time settings of one build of the kernel source (`kernel_source`)."""

    warps: int
    depth: int = DEPTH
    decode: int = 1
    tiles: int = 1
    chunks: int = 1
    korder: int = 0
    chain: int = 0
    lean: int = 0
    prefetch: int = 0
    ahead: int = 0
    shrink: int = 0
    occupy: int = 1
    residual: int = 0
    pdl: int = 0
    l2_next: int = 0
    split_k: int = 0


def kernel_source(variant: KernelVariant) -> str:
    """The CUDA C++ of both kernels for one variant: `warps` warps per block; the GEMV keeping
    `depth` groups' loads in flight, decoding by table (`decode` 1) or byte permutes (0),
    chaining a group's mma (`chain`), loading its epilogue's t and B before the K loop
    (`prefetch`); the rows kernel with `tiles` row tiles per warp and
    `chunks` 8-row chunks of activations; x read in the weight's `korder` (`K_ORDERS`). Plain
    C++ and PTX, no headers."""
    bits = bf16_code_bits()
    lo, hi = [b & 0xFF for b in bits], [b >> 8 for b in bits]

    def word(values: list[int]) -> str:
        return f"0x{values[0] | values[1] << 8 | values[2] << 16 | values[3] << 24:08X}u"

    tables = "\n".join(
        f"#define LO{i} {word(lo[4 * i : 4 * i + 4])}\n#define HI{i} {word(hi[4 * i : 4 * i + 4])}"
        for i in range(4)
    )
    source = _SOURCE_FILE.read_text().replace("@TABLES@", tables)
    for name, value in (
        ("WARPS", variant.warps), ("DEPTH", variant.depth), ("TILES", variant.tiles),
        ("CHUNKS", variant.chunks), ("KORDER", variant.korder), ("CHAIN", variant.chain),
        ("LEAN", variant.lean), ("PREFETCH", variant.prefetch), ("AHEAD", variant.ahead),
        ("SHRINK", variant.shrink), ("OCCUPY", variant.occupy), ("RESIDUAL", variant.residual),
        ("PDL", variant.pdl), ("L2_NEXT", variant.l2_next), ("SPLIT_K", variant.split_k),
    ):  # fmt: skip
        source = source.replace(f"@{name}@", str(value))
    return f"#define DECODE {variant.decode}\n{source}"


@cache
def _kernel(device_index: int, variant: KernelVariant, name: str = "nf4_mma_gemv"):
    with torch.cuda.device(device_index):
        kernel = torch.cuda._compile_kernel(kernel_source(variant), name)
        if variant.decode == 2:  # the 64 KB table is dynamic shared memory, over the 48 KB default
            _allow_shared_memory(kernel, WIDE_TABLE_BYTES + 32 * 1024)  # + the sums after it
        return kernel


def _torch_launch(
    kernel,  # noqa: ANN001 - torch.cuda._utils._CudaKernel, a private class
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    args: list[torch.Tensor | int | float],
    shared_mem: int,
) -> None:
    """A plain launch through torch's launcher (`pdl.launch`'s signature)."""
    kernel(grid=grid, block=block, args=args, shared_mem=shared_mem)


def _allow_shared_memory(kernel, size: int) -> None:  # noqa: ANN001
    """Let `kernel` launch with `size` bytes of dynamic shared memory: torch's own setter where
    this torch has it (it also records the size its launcher checks), else the driver's."""
    setter = getattr(kernel, "set_shared_memory_config", None)
    if setter is not None:
        setter(size)
        return
    import ctypes

    from torch.cuda._utils import _check_cuda, _get_gpu_runtime_library

    max_dynamic_shared = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    driver = _get_gpu_runtime_library()
    _check_cuda(driver.cuFuncSetAttribute(kernel.func, max_dynamic_shared, ctypes.c_int(size)))
