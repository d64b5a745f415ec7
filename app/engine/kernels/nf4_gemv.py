"""NF4 weight x ONE activation row (batch-1 decode) in one streaming pass, for CUDA.

At one row a decode step is a chain of GEMVs that only have to read each packed byte once, so
their speed is bytes per second. bitsandbytes' 4-bit GEMV reads Falcon-7B's weights at under a
fifth of an H200's copy bandwidth, and `nf4_matmul` (tensor-core tiles of 16 rows) is slower
still at one row: both look each weight up in a 16-entry table in global memory.

This kernel has no tensor cores and no per-weight global lookup. The weight is repacked once
(`pack_gemv` from a bitsandbytes `Linear4bit`) so that:

- the words (int32, eight weights each) a program reads in one loop step form one contiguous
  tile, and its steps follow each other, so each program streams one contiguous region in
  16-byte vectors;
- within a scale group of G weights (G = 64, or 32 for blocksize 32), word w holds weights
  `g*G + p*(G/8) + w` at nibble p, so the activations a nibble position needs are contiguous
  too (one vector load per position, not a stride-8 gather);
- the group's scale is stored once (fp16 when that loses nothing that matters, else fp32) and
  multiplies an 8-weight partial sum, not each weight.

How a nibble becomes a value is the `decode` of `GemvConfig`, so the GPU bench can pick:
``lut16`` loads from a 16-entry fp32 table (exact, the fp32 path), ``lut256`` loads one int32
per byte from a 256-entry table of bf16 pairs (1 KB, L1-resident), and ``prmt`` looks the
nibbles up in registers with PTX byte permutes (Marlin-style: the 16 bf16 codes' low and high
bytes are immediates; no memory at all). ``lut256`` and ``prmt`` round the code to bf16, which
is below bf16 activations' own rounding; fp32 activations always use ``lut16``. ``prmt`` is
inline PTX, so it runs on NVIDIA GPUs only, never in Triton's CPU interpreter.

Off CUDA (or without triton) `nf4_gemv` dequantizes and multiplies in torch, so CPU serving
and tests share the API.

Measured on an H200 (bench/results/nf4-gemv.json, CUDA-graph replay over weight copies that
outsize L2): 11.6 us on 4544x4544 against bitsandbytes' 14.4 (1.24x), 1.25-1.33x on the other
Falcon-7B shapes, i.e. 22-32% of copy bandwidth, not the 50% aimed at. ``prmt`` is 2-3x
faster than the two table decodes. The loop is issue-bound as much as memory-bound: ptxas
emits about 7 SASS instructions per weight (nibble select and byte permutes, bf16 widening,
FMA), about what an H200 can issue at 2 TB/s; a leaner decode is the next step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from app.engine.kernels.availability import sm_count, triton_available
from app.engine.kernels.nf4_format import NF4_CODE, code_tables, nf4_codes, nf4_state, reference_row
from app.engine.kernels.nf4_gemv_decode import prmt_asm

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: the torch reference path serves instead
    triton = None

DECODES = ("lut16", "lut256", "prmt")
_FP16_TINY = 2.0**-14  # fp16 scales below this go subnormal
_FP16_BIG = 60000.0


@dataclass(frozen=True)
class GemvNF4:
    """One Linear4bit's weight repacked for nf4_gemv (see the module docstring for the layout).

    Logically `words[n, g, w]` packs, at bits 4p..4p+3, the NF4 index of weight
    `k = g*G + p*(G/8) + w` of output row n, and `scales[n, g]` is that group's absmax. They
    are stored tile-major: the (tile_n rows x tile_groups groups) tile that one program reads
    in one loop step is one contiguous run, and a program's steps follow each other, so each
    program streams one contiguous region. N and the groups are zero-padded to whole tiles
    (zero scales: padding adds nothing).
    """

    words: torch.Tensor  # int32 (N_pad/tn, groups_pad/tg, tn, tg, G/8), contiguous
    scales: torch.Tensor  # fp16 or fp32 (N_pad/tn, groups_pad/tg, tn, tg), contiguous
    out_features: int
    in_features: int
    group: int  # weights per scale: 64, or 32 when bitsandbytes' blocksize was 32
    blocksize: int  # bitsandbytes' absmax block size the weight was quantized with
    tile_n: int  # output rows per program
    tile_groups: int  # scale groups per row per loop step

    @property
    def nbytes(self) -> int:
        """Bytes one GEMV must read: packed weights plus scales."""
        return self.words.numel() * 4 + self.scales.numel() * self.scales.element_size()


@dataclass(frozen=True)
class GemvConfig:
    """Tile and launch parameters of the kernel (see `pick_gemv_config`).

    block_n output rows per program and groups_per_iter scale groups (of G weights) per row
    per loop step are the tile, fixed when the weight is packed; split_k > 1 splits the K loop
    over programs that add into an fp32 buffer.
    """

    block_n: int = 8
    groups_per_iter: int = 4
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    decode: str = "prmt"
    prefetch: bool = False  # load the next step's words before decoding this step's


def pick_gemv_config(n: int, k: int, sm_count: int) -> GemvConfig:
    """The default tile and launch for a bf16 (1, K) x (N, K) GEMV. Edit after a GPU run.

    From the H200 sweeps (bench/results/nf4-gemv.json): one warp per program holding
    2-4 rows x 16 groups (so each thread widens its activations once for all its rows), the
    next step's words prefetched: 11.6 us on 4544x4544, 32.2 us on 4544->18176; on
    K = 18176, 4 rows x 32 groups over 2 warps with the K loop split 4 ways (32.0 us, memset
    and cast included; 34.2 unsplit). Larger tiles at 4 warps were 5-30% slower, and several
    (2 warps, or more than 4 words a thread) make Triton move the decoded values through
    shared memory. On K = 4544 splitting cost 35%.
    """
    if k > 8192:
        return GemvConfig(block_n=4, groups_per_iter=32, split_k=4, num_warps=2, prefetch=True)
    block_n = 4 if n >= 8192 else 2
    config = GemvConfig(block_n=block_n, groups_per_iter=16, num_warps=1, prefetch=True)
    programs = -(-n // config.block_n)
    if programs < sm_count and k >= 2048:
        config = replace(config, split_k=max(1, min(8, (4 * sm_count) // programs)))
    return config


def pack_gemv(
    module, *, tile: tuple[int, int] | None = None, scale_dtype: torch.dtype | None = None
) -> GemvNF4:
    """Repack a bitsandbytes NF4 `Linear4bit` (double quant or not, any device) for nf4_gemv.

    Copies what it needs and leaves the module untouched (it still serves bitsandbytes' own
    forward). Call it once at load: it costs a few ops per weight.

    Args:
        module: a quantized `bitsandbytes.nn.Linear4bit` with quant_type "nf4".
        tile: (rows, groups) a program reads per loop step, powers of two; by default
            `pick_gemv_config`'s for this shape.
        scale_dtype: fp16 or fp32 for the per-group scales; by default fp16 when every scale
            sits in fp16's normal range (half the scale bytes), else fp32.

    Raises:
        ValueError: not NF4, not quantized yet, in_features not a multiple of 32, or a weight
            too large for the kernel's 32-bit offsets.
    """
    state, n, k, group = nf4_state(module, 64, per_word=8)
    blocksize = int(state.blocksize)

    codes, absmax = nf4_codes(module)
    device = codes.device
    wpg = group // 8
    idx = torch.stack([codes >> 4, codes & 0xF], dim=-1).reshape(n, k // group, 8, wpg)
    idx = idx.transpose(2, 3).to(torch.int64)  # (N, groups, w, p)
    shifts = torch.arange(0, 32, 4, device=device, dtype=torch.int64)
    words = (idx << shifts).sum(dim=-1)  # (N, groups, w), each < 2**32
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)

    starts = torch.arange(n, device=device)[:, None] * k
    starts = starts + torch.arange(0, k, group, device=device)[None, :]
    scales = absmax[starts // blocksize]  # (N, groups)
    if scale_dtype is None:
        nonzero = scales[scales != 0].abs()
        fp16_ok = nonzero.numel() == 0 or (
            nonzero.min().item() >= _FP16_TINY and nonzero.max().item() <= _FP16_BIG
        )
        scale_dtype = torch.float16 if fp16_ok else torch.float32
    if tile is None:
        default = pick_gemv_config(n, k, 132)
        tile = (default.block_n, default.groups_per_iter)
    tn, tg = tile
    if tn < 1 or tg < 1 or tn & (tn - 1) or tg & (tg - 1):
        raise ValueError(f"tile sizes must be powers of two, not {tile}")
    code_tables(device)  # made now, so nf4_gemv never copies host data (CUDA graphs)
    return GemvNF4(
        _to_tiles(words, tn, tg), _to_tiles(scales.to(scale_dtype), tn, tg),
        n, k, group, blocksize, tn, tg,
    )  # fmt: skip


def _to_tiles(rows: torch.Tensor, tn: int, tg: int) -> torch.Tensor:
    """(N, groups, *rest) -> (N_pad/tn, groups_pad/tg, tn, tg, *rest), zero-padded."""
    n, groups, rest = rows.shape[0], rows.shape[1], rows.shape[2:]
    n_pad, g_pad = -(-n // tn) * tn, -(-groups // tg) * tg
    padded = rows.new_zeros((n_pad, g_pad, *rest))
    padded[:n, :groups] = rows
    tiles = padded.reshape(n_pad // tn, tn, g_pad // tg, tg, *rest).transpose(1, 2)
    return tiles.contiguous()


def _from_tiles(tiles: torch.Tensor, n: int, groups: int) -> torch.Tensor:
    """Inverse of `_to_tiles`: (N, groups, *rest)."""
    nt, gt, tn, tg, *rest = tiles.shape
    rows = tiles.transpose(1, 2).reshape(nt * tn, gt * tg, *rest)
    return rows[:n, :groups]


def dequantize_gemv(weight: GemvNF4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (out_features, in_features) weight the packed words stand for."""
    n, k, group = weight.out_features, weight.in_features, weight.group
    words = _from_tiles(weight.words, n, k // group)  # (N, groups, w)
    scales = _from_tiles(weight.scales, n, k // group).float()  # (N, groups)
    shifts = torch.arange(0, 32, 4, device=words.device, dtype=torch.int32)
    idx = ((words[..., None] >> shifts) & 0xF).transpose(2, 3)  # (N, groups, p, w)
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=words.device)
    values = code[idx.long()].reshape(n, k // group, group) * scales[..., None]
    return values.reshape(n, k).to(dtype)


def nf4_gemv(
    x: torch.Tensor,
    weight: GemvNF4,
    *,
    lora: tuple[torch.Tensor, torch.Tensor] | None = None,
    gelu: bool = False,
    config: GemvConfig | None = None,
) -> torch.Tensor:
    """`x @ W.T` for ONE activation row x and the NF4 weight W, in x's dtype (fp32 accumulation),
    optionally plus a LoRA update and then GELU, all before the single rounding.

    On CUDA with triton it is one kernel launch (plus a memset and a cast when the K loop is
    split), capturable in a CUDA graph after one warm-up call (which compiles it). Elsewhere it
    dequantizes and multiplies in torch. The epilogue saves batch-1 decode the LoRA B GEMM and
    the GELU launch per projection (each ~3-6 us graphed, against the few ns it adds here).

    Args:
        x: (1, in_features) or (in_features,) activations (any leading dims of product 1),
            bf16, fp16 or fp32, on the weight's device. The result has x's leading dims.
        weight: the packed weight from `pack_gemv`.
        lora: (t, b) adds `t @ b.T` in fp32: t the row's low-rank activations x A.T, R values
            of any float dtype; b (out_features, R), the B factor with the scale folded in, in
            any strides (a column slice of `LoraBank`'s stacked B is read in place). With the K
            loop split only the first split's programs add it.
        gelu: exact (erf) GELU of the sum, as `F.gelu`'s default. Split-K applies it in torch
            to the fp32 sum before the cast (one launch more, the same single rounding).
        config: launch override for benchmarks; `pick_gemv_config` chooses otherwise.

    Raises:
        ValueError: x has the wrong width or more than one row, or lora's shapes do not fit.
    """
    if x.shape[-1] != weight.in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the weight wants {weight.in_features}")
    if x.numel() != weight.in_features:
        raise ValueError(f"nf4_gemv takes one row, not {x.numel() // weight.in_features}")
    if lora is not None:
        lora = _check_lora(lora, weight.out_features)
    lead = x.shape[:-1]
    if not triton_available(x.device):
        return reference_row(x, dequantize_gemv(weight), lora, gelu)
    return _launch(x, weight, config, lora, gelu).reshape(*lead, weight.out_features)


def _check_lora(
    lora: tuple[torch.Tensor, torch.Tensor], out_features: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(t as R values, b) after checking their shapes; None for rank 0 (nothing to add)."""
    t, b = lora
    rank = t.numel()
    if b.dim() != 2 or b.shape != (out_features, rank):
        raise ValueError(f"lora b must be ({out_features}, {rank}), not {tuple(b.shape)}")
    return (t.reshape(-1), b) if rank else None


def _launch(
    x: torch.Tensor,
    weight: GemvNF4,
    config: GemvConfig | None,
    lora: tuple[torch.Tensor, torch.Tensor] | None = None,
    gelu: bool = False,
) -> torch.Tensor:
    """Run the Triton kernel (CUDA, or CPU tensors under TRITON_INTERPRET=1); returns (N,)."""
    n, k, group = weight.out_features, weight.in_features, weight.group
    if config is None:
        index = x.device.index if x.device.index is not None else 0
        config = pick_gemv_config(n, k, sm_count(index) if x.is_cuda else 132)
    if x.dtype == torch.float32 and config.decode != "lut16":
        config = replace(config, decode="lut16")  # the bf16-rounding decodes would cost 1e-3
    if config.decode not in DECODES:
        raise ValueError(f"decode must be one of {DECODES}, not {config.decode!r}")
    config = replace(config, block_n=weight.tile_n, groups_per_iter=weight.tile_groups)
    xv = x.reshape(-1).contiguous()  # (K,)
    iters = triton.cdiv(k // group, config.groups_per_iter)
    per_split = triton.cdiv(iters, config.split_k)
    splits = triton.cdiv(iters, per_split)  # no program without groups
    if splits > 1:
        out = torch.zeros(n, dtype=torch.float32, device=x.device)
    else:
        out = torch.empty(n, dtype=x.dtype, device=x.device)
    tables = code_tables(x.device)
    lut = tables[1] if config.decode == "lut256" else tables[0]
    t, b = lora if lora is not None else (xv, xv)  # placeholders: HAS_LORA=False never reads
    rank = t.numel() if lora is not None else 1
    grid = (triton.cdiv(n, config.block_n), splits)
    _nf4_gemv_kernel[grid](
        xv,
        weight.words,
        weight.scales,
        lut,
        out,
        n,
        t,
        b,
        rank,
        t.stride(0),
        b.stride(0) if lora is not None else 0,
        b.stride(1) if lora is not None else 0,
        K=k,
        GROUP=group,
        BLOCK_N=config.block_n,
        GPI=config.groups_per_iter,
        PER_SPLIT=per_split,
        SPLIT_K=splits,
        DECODE=DECODES.index(config.decode),
        PREFETCH=config.prefetch,
        HAS_LORA=lora is not None,
        BLOCK_R=triton.next_power_of_2(rank),
        GELU=gelu and splits == 1,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if splits == 1:
        return out
    return (torch.nn.functional.gelu(out) if gelu else out).to(x.dtype)


if triton is not None:
    _PRMT_ASM = tl.constexpr(prmt_asm())

    @triton.jit
    def _nf4_gemv_kernel(
        x_ptr,
        w_ptr,
        s_ptr,
        lut_ptr,
        out_ptr,
        N,
        t_ptr,
        b_ptr,
        R,
        t_stride,
        b_stride_n,
        b_stride_r,
        K: tl.constexpr,
        GROUP: tl.constexpr,
        BLOCK_N: tl.constexpr,
        GPI: tl.constexpr,
        PER_SPLIT: tl.constexpr,
        SPLIT_K: tl.constexpr,
        DECODE: tl.constexpr,
        PREFETCH: tl.constexpr,
        HAS_LORA: tl.constexpr,
        BLOCK_R: tl.constexpr,
        GELU: tl.constexpr,
    ):
        """out[n] (+)= sum_g scale[n, g] * sum_{w, p} code[nib_p(word[n, g, w])] * x[g, p, w].

        The tile is (BLOCK_N rows, GPI groups, G/8 words); per word, the 8 nibbles' products
        are summed before the group's scale multiplies them. With HAS_LORA the first K split
        also adds sum_r t[r] * b[n, r]; GELU (unsplit only) is applied before the store.
        """
        WPG: tl.constexpr = GROUP // 8
        N_GROUPS: tl.constexpr = K // GROUP
        K_TILES: tl.constexpr = (N_GROUPS + GPI - 1) // GPI
        TILE_WORDS: tl.constexpr = BLOCK_N * GPI * WPG
        EVEN: tl.constexpr = PER_SPLIT * SPLIT_K == K_TILES  # no step past the last tile
        X_EVEN: tl.constexpr = EVEN and N_GROUPS % GPI == 0  # no padded group either
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        offs_r = tl.arange(0, BLOCK_N)
        offs_n = pid_n * BLOCK_N + offs_r
        n_mask = offs_n < N
        offs_g = tl.arange(0, GPI)
        offs_w = tl.arange(0, WPG)
        t0 = pid_k * PER_SPLIT  # this program's first k tile
        # Tiles are indexed (group, row, word) so that Triton spreads a warp's threads over
        # groups and words first and a thread keeps several rows: their x values are then
        # loaded and widened once for all of them.
        in_tile = offs_g[:, None, None] * WPG + offs_r[None, :, None] * (GPI * WPG)
        w_at = w_ptr + (pid_n * K_TILES + t0) * TILE_WORDS + in_tile + offs_w[None, None, :]
        s_at = s_ptr + (pid_n * K_TILES + t0) * (BLOCK_N * GPI)
        s_at += offs_g[:, None, None] + offs_r[None, :, None] * GPI  # (GPI, BN, 1)

        acc = tl.zeros((GPI, BLOCK_N, WPG), dtype=tl.float32)
        if PREFETCH:  # the first step's words; each step then loads the next one's
            if EVEN:
                w_next = tl.load(w_at)
            else:
                w_next = tl.load(w_at, mask=t0 < K_TILES, other=0)
        for it in range(PER_SPLIT):
            t = t0 + it
            if PREFETCH:
                words = w_next
                if EVEN:
                    w_next = tl.load(w_at + (it + 1) * TILE_WORDS, mask=it + 1 < PER_SPLIT)
                else:
                    ahead = (it + 1 < PER_SPLIT) & (t + 1 < K_TILES)
                    w_next = tl.load(w_at + (it + 1) * TILE_WORDS, mask=ahead, other=0)
            elif EVEN:
                words = tl.load(w_at + it * TILE_WORDS)  # (GPI, BN, W) int32
            else:
                words = tl.load(w_at + it * TILE_WORDS, mask=t < K_TILES, other=0)
            if EVEN:
                scale = tl.load(s_at + it * (BLOCK_N * GPI)).to(tl.float32)  # (GPI, BN, 1)
            else:
                scale = tl.load(s_at + it * (BLOCK_N * GPI), mask=t < K_TILES, other=0.0)
                scale = scale.to(tl.float32)
            g3 = (t * GPI + offs_g)[:, None, None]  # (GPI, 1, 1): global group index
            if X_EVEN:
                x_mask = offs_w[None, None, :] < WPG  # all true; keeps one code path below
            else:
                x_mask = (g3 < N_GROUPS) & (offs_w[None, None, :] < WPG)
            x_at = x_ptr + g3 * GROUP + offs_w[None, None, :]  # (GPI, 1, W): nibble 0's k
            dot = tl.zeros((GPI, BLOCK_N, WPG), dtype=tl.float32)
            if DECODE == 2:  # prmt: all 8 nibbles in registers, one asm block per word
                v0, v1, v2, v3, v4, v5, v6, v7 = tl.inline_asm_elementwise(
                    _PRMT_ASM,
                    "=r,=r,=r,=r,=r,=r,=r,=r,r",
                    [words],
                    dtype=(tl.float32,) * 8,
                    is_pure=True,
                    pack=1,
                )
                dot += v0 * tl.load(x_at, mask=x_mask, other=0.0).to(tl.float32)
                dot += v1 * tl.load(x_at + WPG, mask=x_mask, other=0.0).to(tl.float32)
                dot += v2 * tl.load(x_at + 2 * WPG, mask=x_mask, other=0.0).to(tl.float32)
                dot += v3 * tl.load(x_at + 3 * WPG, mask=x_mask, other=0.0).to(tl.float32)
                dot += v4 * tl.load(x_at + 4 * WPG, mask=x_mask, other=0.0).to(tl.float32)
                dot += v5 * tl.load(x_at + 5 * WPG, mask=x_mask, other=0.0).to(tl.float32)
                dot += v6 * tl.load(x_at + 6 * WPG, mask=x_mask, other=0.0).to(tl.float32)
                dot += v7 * tl.load(x_at + 7 * WPG, mask=x_mask, other=0.0).to(tl.float32)
            elif DECODE == 1:  # lut256: one int32 (two bf16 codes) per byte
                for i in tl.static_range(4):
                    pair = tl.load(lut_ptr + ((words >> (8 * i)) & 0xFF))
                    low = (pair << 16).to(tl.float32, bitcast=True)  # nibble 2i
                    high = (pair & -65536).to(tl.float32, bitcast=True)  # nibble 2i + 1
                    x_lo = tl.load(x_at + 2 * i * WPG, mask=x_mask, other=0.0).to(tl.float32)
                    x_hi = tl.load(x_at + (2 * i + 1) * WPG, mask=x_mask, other=0.0)
                    dot += low * x_lo + high * x_hi.to(tl.float32)
            else:  # lut16: one fp32 code load per nibble (exact)
                for p in tl.static_range(8):
                    value = tl.load(lut_ptr + ((words >> (4 * p)) & 0xF))
                    xp = tl.load(x_at + p * WPG, mask=x_mask, other=0.0).to(tl.float32)
                    dot += value * xp
            acc += dot * scale

        y = tl.sum(tl.sum(acc, axis=2), axis=0)  # (BN,)
        if HAS_LORA:  # masked off (no memory read) in the later K splits
            offs_rk = tl.arange(0, BLOCK_R)
            r_mask = (offs_rk < R) & (pid_k == 0)
            low = tl.load(t_ptr + offs_rk * t_stride, mask=r_mask, other=0.0).to(tl.float32)
            b_at = b_ptr + offs_n[:, None] * b_stride_n + offs_rk[None, :] * b_stride_r
            b_tile = tl.load(b_at, mask=n_mask[:, None] & r_mask[None, :], other=0.0)
            y += tl.sum(b_tile.to(tl.float32) * low[None, :], axis=1)
        if GELU:
            y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
        if SPLIT_K > 1:
            tl.atomic_add(out_ptr + offs_n, y, mask=n_mask, sem="relaxed")
        else:
            tl.store(out_ptr + offs_n, y.to(out_ptr.dtype.element_ty), mask=n_mask)
