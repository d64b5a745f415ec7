"""NF4 x activations in one pass over the packed 4-bit weights, for batched decode on CUDA.

bitsandbytes' 4-bit GEMV reaches about a third of memory bandwidth, and for more than one row
it dequantizes the whole weight to 16 bits and runs a GEMM: roughly eight times the bytes of the
packed weight. Decode with up to 64 rows is memory-bound, so a kernel that reads each packed
byte once and multiplies all rows against it is what sets the step time.

The weight of a `bitsandbytes.nn.Linear4bit` is repacked once (`pack_linear4bit`) into a layout
the kernel streams contiguously; `nf4_matmul` runs the Triton kernel on CUDA and a plain torch
reference (dequantize, then matmul) everywhere else, so CPU serving and tests share the code.

Measured on an H200 (bench/results/nf4-matmul.json): 1.05-3.8x faster than bitsandbytes for
2 to 64 rows, but at 11-19% of copy bandwidth, not near it; for a single row bitsandbytes'
GEMV is faster (14.5 against 19 us on 4544x4544). Every tile, prefetch and CUDA-core variant
tried landed within a few percent. The compiled loop (sm_90 SASS) issues one 2-byte global
load from the 16-entry code table per weight, plus its 64-bit address arithmetic, against two
16-byte loads for 64 packed weights: those lookups are the likely limit, and a register-only
decode (byte permutes, as Marlin-style kernels do) the next step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.engine.kernels.availability import sm_count, triton_available
from app.engine.kernels.nf4_format import FP16_BIG, FP16_TINY, code_table, nf4_codes, nf4_state

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: the torch reference path serves instead
    triton = None

_MAX_GROUP = 64  # k-elements per scale in the packed layout (one tl.dot's reduction length)


@dataclass(frozen=True)
class PackedNF4:
    """One Linear4bit's weight repacked for nf4_matmul.

    Layout: the in_features axis is cut into groups of `group_size` (a power of two, at most
    64) elements. `packed[g, n, j]` holds elements `g*group_size + 2j` (high nibble) and
    `+ 2j + 1` (low nibble) of output row n, as NF4 indices; `scales[g, n]` is the absmax of
    the bitsandbytes block they came from. Group-major order makes the kernel's tile for one
    group a single contiguous run of bytes.
    """

    packed: torch.Tensor  # uint8 (K // group, N, group // 2)
    scales: torch.Tensor  # fp16, or fp32 when fp16 would lose precision: (K // group, N)
    out_features: int
    in_features: int
    blocksize: int  # bitsandbytes' absmax block size the weight was quantized with

    @property
    def group_size(self) -> int:
        return self.in_features // self.packed.shape[0]


@dataclass(frozen=True)
class KernelConfig:
    """Tile shape and launch parameters of the Triton kernel (see `pick_config`)."""

    block_n: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 3
    prefetch: bool = False  # load group g+1's bytes before decoding group g


def pack_linear4bit(module) -> PackedNF4:
    """Repack a bitsandbytes NF4 `Linear4bit` (double quant or not, any device) for nf4_matmul.

    Copies what it needs and leaves the module untouched, so the same module still serves
    bitsandbytes' own forward (LoRA training, fallbacks).

    Raises:
        ValueError: the weight is not NF4, not quantized yet, or in_features is not a
            multiple of 32 (the kernel's smallest reduction group).
    """
    state, out_features, in_features, group = nf4_state(module, _MAX_GROUP, per_word=2)
    blocksize = int(state.blocksize)

    codes, absmax = nf4_codes(module)
    device = codes.device
    # (N, K/2) -> (K/group, N, group/2): group-major, one contiguous tile per group.
    packed = codes.reshape(out_features, in_features // group, group // 2)
    packed = packed.permute(1, 0, 2).contiguous()
    # Every group sits inside one absmax block: group divides both blocksize and in_features.
    starts = torch.arange(out_features, device=device)[None, :] * in_features
    starts = starts + torch.arange(0, in_features, group, device=device)[:, None]
    scales = absmax[starts // blocksize]  # (K/group, N)
    nonzero = scales[scales != 0].abs()
    fp16_ok = nonzero.numel() == 0 or (
        nonzero.min().item() >= FP16_TINY and nonzero.max().item() <= FP16_BIG
    )
    scales = scales.to(torch.float16 if fp16_ok else torch.float32).contiguous()
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        code_table(device, dtype)  # made now so nf4_matmul never copies host data (graphs)
    return PackedNF4(packed, scales, out_features, in_features, blocksize)


def concat_packed(parts: list[PackedNF4]) -> PackedNF4:
    """Projections of one input packed side by side (their outputs in order), so that one
    `nf4_matmul` launch computes them all, as the `mma` routing joins q/k/v.

    Raises:
        ValueError: the parts differ in inputs, group size or absmax block size.
    """
    first = parts[0]
    if any(
        (p.in_features, p.group_size, p.blocksize)
        != (first.in_features, first.group_size, first.blocksize)
        for p in parts
    ):
        raise ValueError("joined parts must share inputs, group size and absmax block size")
    dtype = torch.float32 if any(p.scales.dtype == torch.float32 for p in parts) else None
    return PackedNF4(
        torch.cat([p.packed for p in parts], dim=1).contiguous(),
        torch.cat([p.scales if dtype is None else p.scales.to(dtype) for p in parts], dim=1),
        sum(p.out_features for p in parts),
        first.in_features,
        first.blocksize,
    )


def dequantize_packed(weight: PackedNF4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (out_features, in_features) weight the packed bytes stand for."""
    code = code_table(weight.packed.device, torch.float32)
    idx = torch.stack([weight.packed >> 4, weight.packed & 0xF], dim=-1).long()
    values = code[idx].flatten(2) * weight.scales.float()[:, :, None]  # (K/g, N, g)
    return values.permute(1, 0, 2).reshape(weight.out_features, weight.in_features).to(dtype)


def nf4_matmul(
    x: torch.Tensor, weight: PackedNF4, *, config: KernelConfig | None = None
) -> torch.Tensor:
    """`x @ W.T` for the NF4 weight W, in x's dtype.

    On CUDA with triton this is one kernel launch (plus a memset and a cast when the
    reduction is split), safe to capture in a CUDA graph after a warm-up call: Triton
    compiles one kernel per weight shape and row bucket (1-16, 17-32, 33-64 rows) on first
    use. Elsewhere it dequantizes and multiplies in torch.

    Args:
        x: (M, in_features) activations, bf16, fp16 or fp32, on the weight's device.
        weight: the packed weight from `pack_linear4bit`.
        config: tile override for benchmarks; `pick_config` chooses otherwise.
    """
    if x.shape[-1] != weight.in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the weight wants {weight.in_features}")
    if not triton_available(x.device):
        return x @ dequantize_packed(weight, x.dtype).T
    return _launch(x, weight, config)


def pick_config(m: int, n: int, k: int, group: int, sm_count: int) -> KernelConfig:
    """Tiles for one (M, N, K), from the H200 sweep in bench/results/nf4-matmul.json.

    What pays is many programs per SM (about 8 waves' worth), reached by splitting the K loop
    and adding partial sums atomically. Up to 32 rows, 128-wide N tiles; above, 64-wide
    tiles with the next group's bytes prefetched (each was within 3% of the best tried).
    """
    if m <= 16:
        block_n, waves, prefetch = 128, 8, False
    elif m <= 32:
        block_n, waves, prefetch = 128, 2, False
    else:
        block_n, waves, prefetch = 64, 8, True
    m_tiles = triton.cdiv(m, _block_m(m))
    split_k = split_for(n, k, group, block_n, m_tiles, waves * sm_count)
    return KernelConfig(block_n, split_k, num_warps=4, num_stages=3, prefetch=prefetch)


def split_for(n: int, k: int, group: int, block_n: int, m_tiles: int, programs: int) -> int:
    """K splits that bring the grid near `programs`, keeping at least two groups per split."""
    tiles = triton.cdiv(n, block_n) * m_tiles
    return max(1, min(k // group // 2, round(programs / tiles)))


def _block_m(m: int) -> int:
    return max(16, min(64, triton.next_power_of_2(m)))


def _launch(x: torch.Tensor, weight: PackedNF4, config: KernelConfig | None) -> torch.Tensor:
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k)  # (M, K)
    m, n, group = x2.shape[0], weight.out_features, weight.group_size
    if config is None:
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        config = pick_config(m, n, k, group, sm_count(index))
    block_m = _block_m(m)
    per_split = triton.cdiv(k // group, config.split_k)
    splits = triton.cdiv(k // group, per_split)  # no program without groups
    split = splits > 1
    if split:
        out = torch.zeros((m, n), dtype=torch.float32, device=x.device)
    else:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(n, config.block_n), splits, triton.cdiv(m, block_m))
    _nf4_matmul_kernel[grid](
        x2,
        weight.packed,
        weight.scales,
        code_table(x.device, x.dtype),
        out,
        m,
        n,
        k,
        x2.stride(0),
        x2.stride(1),
        GROUP=group,
        BLOCK_N=config.block_n,
        BLOCK_M=block_m,
        SPLIT_K=splits,
        PER_SPLIT=per_split,
        PREFETCH=config.prefetch,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if split:
        out = out.to(x.dtype)
    return out.reshape(*lead, n)


if triton is not None:

    @triton.jit
    def _nf4_matmul_kernel(
        x_ptr,
        w_ptr,
        s_ptr,
        code_ptr,
        out_ptr,
        M,
        N,
        K,
        stride_xm,
        stride_xk,
        GROUP: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_M: tl.constexpr,
        SPLIT_K: tl.constexpr,
        PER_SPLIT: tl.constexpr,
        PREFETCH: tl.constexpr,
    ):
        """out[m, n] (+)= sum_k x[m, k] * code[w[k, n]] * scale[k // GROUP, n].

        Computed transposed, (BLOCK_N, BLOCK_M) per program, so the weight tile is the wide
        operand of the tensor-core product and a handful of rows pad only to 16.
        """
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        pid_m = tl.program_id(2)
        n_groups = K // GROUP
        g_start = pid_k * PER_SPLIT

        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        n_mask = offs_n < N
        m_mask = offs_m < M
        offs_b = tl.arange(0, GROUP // 2)
        offs_k = tl.arange(0, GROUP)
        w_ptrs = w_ptr + offs_n[:, None] * (GROUP // 2) + offs_b[None, :]  # (BN, G/2)
        x_ptrs = x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None] * stride_xk  # (G, BM)
        group_bytes = N * (GROUP // 2)

        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        if PREFETCH:  # the first group's bytes; each iteration then loads the next one's
            first = g_start < n_groups
            w_next = tl.load(w_ptrs + g_start * group_bytes, mask=n_mask[:, None] & first, other=0)
            s_next = tl.load(s_ptr + g_start * N + offs_n, mask=n_mask & first, other=0.0)
        for i in range(0, PER_SPLIT):
            g = g_start + i
            in_k = g < n_groups  # the last split can run past K
            if PREFETCH:
                packed = w_next
                scale = s_next
                ahead = (g + 1 < n_groups) & (i + 1 < PER_SPLIT)
                w_at = w_ptrs + (g + 1) * group_bytes
                w_next = tl.load(w_at, mask=n_mask[:, None] & ahead, other=0)
                s_next = tl.load(s_ptr + (g + 1) * N + offs_n, mask=n_mask & ahead, other=0.0)
            else:
                packed = tl.load(w_ptrs + g * group_bytes, mask=n_mask[:, None] & in_k, other=0)
                scale = tl.load(s_ptr + g * N + offs_n, mask=n_mask & in_k, other=0.0)
            x_mask = m_mask[None, :] & in_k
            xt = tl.load(x_ptrs + g * GROUP * stride_xk, mask=x_mask, other=0.0)
            idx = packed.to(tl.int32)
            high = tl.load(code_ptr + (idx >> 4))  # even k
            low = tl.load(code_ptr + (idx & 15))  # odd k
            w = tl.reshape(tl.join(high, low), (BLOCK_N, GROUP))  # (BN, G), k in order
            # The group shares one scale, so it multiplies the (BN, BM) product, not the tile.
            acc += tl.dot(w, xt) * scale.to(tl.float32)[:, None]

        out_ptrs = out_ptr + offs_m[None, :] * N + offs_n[:, None]  # (BN, BM) of (M, N)
        mask = n_mask[:, None] & m_mask[None, :]
        if SPLIT_K > 1:
            tl.atomic_add(out_ptrs, acc, mask=mask, sem="relaxed")
        else:
            tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)
