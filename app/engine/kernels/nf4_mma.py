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

The kernel source is compiled once per device with NVRTC through `torch.cuda._compile_kernel`
(no nvcc, no headers: plain C++ and inline PTX). Off CUDA, `nf4_mma_gemv` dequantizes and
multiplies in torch, and `dequantize_mma` undoes the layout, which is how the CPU tests check
the packing against bitsandbytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from app.engine.kernels.nf4_gemv_decode import bf16_code_bits, code_tables
from app.engine.kernels.nf4_matmul import NF4_CODE, nf4_codes, nf4_state, reference_row

TILE_ROWS = 16
DEPTH = 1  # groups each warp loads ahead
WARPS = 16  # per block (one 16-row tile; they split K): best of 4, 8, 16 on two H200s
PER_SM = 2  # blocks per SM, each serving several row tiles (0: one block per tile); 2 beat
# one block per tile by 1-13 % per Falcon-7B shape on an H200 (nf4-mma.json's sweep)
GROUP = 64  # k per scale: one lane's 16 bytes hold its four 16-wide k steps of a group
_FP16_TINY = 2.0**-14
_FP16_BIG = 60000.0


@dataclass(frozen=True)
class MmaNF4:
    """One Linear4bit's weight in `nf4_mma_gemv`'s layout (module docstring)."""

    words: torch.Tensor  # int32 (K/64, N/16, 32 lanes, 4 words), contiguous
    scales: torch.Tensor  # fp16 (K/64, N/16, 16), contiguous
    out_features: int
    in_features: int

    @property
    def nbytes(self) -> int:
        """Bytes one GEMV reads: packed weights plus scales."""
        return self.words.numel() * 4 + self.scales.numel() * 2


def mma_reason(module) -> str | None:
    """Why `pack_mma` cannot take this Linear4bit, or None when it can."""
    try:
        _, n, k, group = nf4_state(module, GROUP, per_word=8)
    except ValueError as exc:
        return str(exc)
    if getattr(module, "bias", None) is not None:
        return "the layer has a bias"
    if n % TILE_ROWS or k % GROUP or group != GROUP:
        return f"needs out_features % {TILE_ROWS} == 0 and 64-weight scale blocks"
    return None


def pack_mma(module) -> MmaNF4 | None:
    """Repack a bitsandbytes NF4 `Linear4bit` for `nf4_mma_gemv`, or None when its shape
    (`mma_reason`) or its scales (outside fp16's normal range) do not fit the kernel.

    Copies what it needs and leaves the module serving as before. Call it once at load.
    """
    if mma_reason(module) is not None:
        return None
    codes, absmax = nf4_codes(module)
    n, k = codes.shape[0], codes.shape[1] * 2
    blocksize = int(module.weight.quant_state.blocksize)
    idx = torch.stack([codes >> 4, codes & 0xF], dim=-1).reshape(n, k).to(torch.int64)
    # row = 16 r + 8 h + g, k = 64 q + 16 j + 8 c + 2 t + e  ->  lane 4 g + t, word j,
    # nibble 4 c + 2 h + e (the mma A fragment's register order).
    idx = idx.view(n // 16, 2, 8, k // 64, 4, 2, 4, 2)  # r h g q j c t e
    nibbles = idx.permute(0, 3, 2, 6, 4, 5, 1, 7).reshape(n // 16, k // 64, 32, 4, 8)
    shifts = torch.arange(0, 32, 4, device=idx.device, dtype=torch.int64)
    words = (nibbles << shifts).sum(dim=-1)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)

    starts = torch.arange(n, device=idx.device)[:, None] * k
    starts = starts + torch.arange(0, k, GROUP, device=idx.device)[None, :]
    scales = absmax[starts // blocksize]  # (N, K/64)
    nonzero = scales[scales != 0].abs()
    if nonzero.numel() and (nonzero.min() < _FP16_TINY or nonzero.max() > _FP16_BIG):
        return None
    scales = scales.view(n // 16, 16, k // 64).permute(2, 0, 1).to(torch.float16)
    return MmaNF4(words.transpose(0, 1).contiguous(), scales.contiguous(), n, k)


def dequantize_mma(weight: MmaNF4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (out_features, in_features) weight the packed words stand for."""
    n, k = weight.out_features, weight.in_features
    shifts = torch.arange(0, 32, 4, device=weight.words.device, dtype=torch.int32)
    nibbles = (weight.words.transpose(0, 1)[..., None] >> shifts) & 0xF  # (N/16, K/64, ...)
    idx = nibbles.view(n // 16, k // 64, 8, 4, 4, 2, 2, 2)  # r q g t j c h e
    idx = idx.permute(0, 6, 2, 1, 4, 5, 3, 7).reshape(n, k)
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=idx.device)
    scales = weight.scales.float().permute(1, 2, 0).reshape(n, k // GROUP)
    values = code[idx.long()].view(n, k // GROUP, GROUP) * scales[..., None]
    return values.view(n, k).to(dtype)


def mma_available(device: torch.device) -> bool:
    """True where the kernel runs: CUDA sm80+ with torch's NVRTC kernel compiler."""
    return (
        device.type == "cuda"
        and torch.cuda.is_available()
        and hasattr(torch.cuda, "_compile_kernel")
        and torch.cuda.get_device_capability(device) >= (8, 0)
    )


def nf4_mma_gemv(
    x: torch.Tensor,
    weight: MmaNF4,
    *,
    lora: tuple[torch.Tensor, torch.Tensor] | None = None,
    gelu: bool = False,
    config: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """`x @ W.T` for ONE bf16 activation row, in bf16 (fp32 accumulation), optionally plus a
    LoRA update and through GELU, all before the one rounding.

    On CUDA one kernel launch, capturable in a CUDA graph after the first call (which compiles
    the kernel); elsewhere torch dequantizes and multiplies.

    Args:
        lora: (t, b): the row's low-rank activations t = x A.T (R values, bf16) and B with
            the scale folded in, (out_features, R) bf16 with unit column stride (a column
            slice of `LoraBank`'s stacked B is fine): adds t B.T.
        gelu: apply exact (erf) GELU to the result.
        config: (warps per block, groups each warp loads ahead, decode 0 = byte permutes /
            1 = shared-memory table, blocks per SM: 0 = one block per row tile, else that
            many blocks per SM each serving several tiles) for benchmarks; by default
            `WARPS`, `DEPTH`, 1, `PER_SM`.

    Raises:
        ValueError: x is not one row of in_features values.
    """
    if x.shape[-1] != weight.in_features or x.numel() != weight.in_features:
        raise ValueError(f"nf4_mma_gemv takes one row of {weight.in_features} values")
    lead = x.shape[:-1]
    if not mma_available(x.device):
        return reference_row(x, dequantize_mma(weight), lora, gelu)
    if x.dtype != torch.bfloat16:
        raise ValueError("the tensor-core GEMV takes bf16 activations")
    row = x.reshape(-1).contiguous()
    out = torch.empty(weight.out_features, dtype=torch.bfloat16, device=x.device)
    t, b, rank = row, row, 0  # placeholders the kernel never reads when rank is 0
    if lora is not None:
        t, b = lora[0].reshape(-1).contiguous(), lora[1]
        rank = t.numel()
        if b.shape != (weight.out_features, rank) or b.stride(1) != 1 or b.dtype != x.dtype:
            raise ValueError("lora B must be (out_features, rank) bf16 with unit column stride")
    warps, depth, decode, per_sm = config or (WARPS, DEPTH, 1, PER_SM)
    tiles = weight.out_features // TILE_ROWS
    blocks = min(tiles, per_sm * _sm_count(x.device)) if per_sm else tiles
    _kernel(x.device.index or 0, warps, depth, decode)(
        grid=(blocks, 1, 1),
        block=(32 * warps, 1, 1),
        args=[
            weight.words, weight.scales, row, out, weight.in_features // GROUP,
            code_tables(x.device)[1], t, b, rank, b.stride(0) if rank else 0, int(gelu), tiles,
        ],
    )  # fmt: skip
    return out.reshape(*lead, weight.out_features)


def kernel_source(warps: int, depth: int = DEPTH, decode: int = 1) -> str:
    """The CUDA C++ of the kernel for `warps` warps per block, each keeping `depth` groups'
    loads in flight (plain C++ and PTX, no headers)."""
    bits = bf16_code_bits()
    lo, hi = [b & 0xFF for b in bits], [b >> 8 for b in bits]

    def word(values: list[int]) -> str:
        return f"0x{values[0] | values[1] << 8 | values[2] << 16 | values[3] << 24:08X}u"

    tables = "\n".join(
        f"#define LO{i} {word(lo[4 * i : 4 * i + 4])}\n#define HI{i} {word(hi[4 * i : 4 * i + 4])}"
        for i in range(4)
    )
    source = _SOURCE.replace("@TABLES@", tables).replace("@WARPS@", str(warps))
    source = source.replace("@DEPTH@", str(depth))
    return f"#define DECODE {decode}\n{source}"


@cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


@cache
def _kernel(device_index: int, warps: int, depth: int, decode: int):
    with torch.cuda.device(device_index):
        return torch.cuda._compile_kernel(kernel_source(warps, depth, decode), "nf4_mma_gemv")


_SOURCE = r"""
@TABLES@
#define WARPS @WARPS@
#define DEPTH @DEPTH@

__device__ __forceinline__ unsigned prmt(unsigned a, unsigned b, unsigned c) {
  unsigned d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// Four nibbles (low 16 bits of sel) -> their bf16 codes as two pairs: (n0, n1), (n2, n3).
__device__ __forceinline__ void decode4(unsigned sel, unsigned &p0, unsigned &p1) {
  unsigned s = sel & 0x7777u;                       // code & 7: byte within 8
  unsigned c = ((sel >> 1) & 0x4444u) | 0x3210u;    // code & 8: which 8
  unsigned lo = prmt(prmt(LO0, LO1, s), prmt(LO2, LO3, s), c);
  unsigned hi = prmt(prmt(HI0, HI1, s), prmt(HI2, HI3, s), c);
  p0 = prmt(lo, hi, 0x5140u);
  p1 = prmt(lo, hi, 0x7362u);
}

#ifndef DECODE
#define DECODE 1
#endif


// One word's eight nibbles -> the four bf16-pair registers of the A fragment.
__device__ __forceinline__ void decode_word(unsigned w, const unsigned *lut, unsigned &a0,
                                            unsigned &a1, unsigned &a2, unsigned &a3) {
#if DECODE == 1  // shared-memory table of bf16 pairs per byte, one copy per lane (no conflicts)
  a0 = lut[(w & 0xFFu) << 5];
  a1 = lut[((w >> 8) & 0xFFu) << 5];
  a2 = lut[((w >> 16) & 0xFFu) << 5];
  a3 = lut[(w >> 24) << 5];
#else  // byte permutes on register constants
  decode4(w, a0, a1);
  decode4(w >> 16, a2, a3);
#endif
}

__device__ __forceinline__ void mma(float &c0, float &c1, float &c2, float &c3, unsigned w,
                                    unsigned b0, unsigned b1, const unsigned *lut) {
  unsigned a0, a1, a2, a3;
  decode_word(w, lut, a0, a1, a2, a3);
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void load16(const unsigned *p, unsigned &a, unsigned &b, unsigned &c,
                                       unsigned &d) {
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(a), "=r"(b), "=r"(c), "=r"(d) : "l"(p));
}

__device__ __forceinline__ float half_to_float(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

__device__ __forceinline__ float bf16_to_float(unsigned short h) {
  float f;
  asm("{ .reg .b32 t; cvt.u32.u16 t, %1; shl.b32 t, t, 16; mov.b32 %0, t; }" : "=f"(f) : "h"(h));
  return f;
}

__device__ __forceinline__ unsigned short float_to_bf16(float f) {
  unsigned short h;
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}

// x fragments of one group for lanes with g == 0 (column 0 of B); other lanes multiply zeros.
__device__ __forceinline__ void load_x(const unsigned *x, int q, int g, int t, unsigned *b) {
#pragma unroll
  for (int j = 0; j < 8; ++j) b[j] = 0u;
  if (g == 0) {
    const unsigned *xp = x + q * 32 + t;  // bf16 pairs: k = 64 q + 16 j + 2 t (+8)
#pragma unroll
    for (int j = 0; j < 4; ++j) { b[2 * j] = xp[8 * j]; b[2 * j + 1] = xp[8 * j + 4]; }
  }
}

__device__ __forceinline__ void load_scales(const unsigned short *s, int g,
                                            unsigned short *out) {
  asm("ld.global.nc.u16 %0, [%1];" : "=h"(out[0]) : "l"(s + g));
  asm("ld.global.nc.u16 %0, [%1];" : "=h"(out[1]) : "l"(s + g + 8));
}

// DEPTH groups' words, x fragments and scales of one tile, loaded ahead of their use.
__device__ __forceinline__ void preload(const unsigned *w, const unsigned short *s,
                                        const unsigned *x, long long word_step, int tiles,
                                        int first, int groups, int g, int t,
                                        unsigned (*u)[4], unsigned (*b)[8],
                                        unsigned short (*sc)[2]) {
#pragma unroll
  for (int d = 0; d < DEPTH; ++d) {
    const int q = first + d * WARPS;
    if (q < groups) {
      load16(w + q * word_step, u[d][0], u[d][1], u[d][2], u[d][3]);
      load_x(x, q, g, t, b[d]);
      load_scales(s + q * tiles * 16, g, sc[d]);
    }
  }
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
nf4_mma_gemv(const unsigned *__restrict__ words, const unsigned short *__restrict__ scales,
             const unsigned *__restrict__ x, unsigned short *__restrict__ out, int groups,
             const unsigned *__restrict__ pairs, const unsigned short *__restrict__ lora_t,
             const unsigned short *__restrict__ lora_b, int rank, int b_stride, int gelu,
             int tiles) {
  __shared__ unsigned table[256 * 32];  // byte -> bf16 pair, one copy per lane
  __shared__ float partial[WARPS * 16];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const long long word_step = (long long)tiles * 128;
  // A block serves tiles blockIdx.x, + gridDim.x, ...: with fewer blocks than tiles the
  // shared table is filled once for several tiles.
  int tile = blockIdx.x;
  // DEPTH groups' words, x fragments and scales are loaded ahead of the group being
  // multiplied (more than one in flight cost occupancy and was slower on an H200); the
  // first tile's are on their way while the table fills.
  unsigned u[DEPTH][4], b[DEPTH][8];
  unsigned short sc[DEPTH][2];
  preload(words + ((long long)tile * 32 + lane) * 4, scales + tile * 16, x, word_step, tiles,
          warp, groups, g, t, u, b, sc);
  for (int i = threadIdx.x; i < 256 * 32; i += WARPS * 32) table[i] = pairs[i >> 5];
  __syncthreads();
  const unsigned *lut = table + lane;

  for (; tile < tiles; tile += gridDim.x) {
    const unsigned *w = words + ((long long)tile * 32 + lane) * 4;  // + q * tiles * 128
    const unsigned short *s = scales + tile * 16;  // + q * tiles * 16
    float acc0 = 0.f, acc1 = 0.f;  // rows g and g + 8 (column 0 of the mma output)
    for (int base = warp; base < groups; base += DEPTH * WARPS) {
#pragma unroll
      for (int d = 0; d < DEPTH; ++d) {
        const int q = base + d * WARPS;
        if (q < groups) {
          unsigned cur[4] = {u[d][0], u[d][1], u[d][2], u[d][3]};
          unsigned xb[8];
#pragma unroll
          for (int j = 0; j < 8; ++j) xb[j] = b[d][j];
          const float s0 = half_to_float(sc[d][0]), s1 = half_to_float(sc[d][1]);
          const int ahead = q + DEPTH * WARPS;
          if (ahead < groups) {
            load16(w + ahead * word_step, u[d][0], u[d][1], u[d][2], u[d][3]);
            load_x(x, ahead, g, t, b[d]);
            load_scales(s + ahead * tiles * 16, g, sc[d]);
          }
          float c[4][4];  // four independent products: no chain of dependent mma latencies
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
            mma(c[j][0], c[j][1], c[j][2], c[j][3], cur[j], xb[2 * j], xb[2 * j + 1], lut);
          }
          acc0 += s0 * ((c[0][0] + c[1][0]) + (c[2][0] + c[3][0]));  // lanes with t == 0
          acc1 += s1 * ((c[0][2] + c[1][2]) + (c[2][2] + c[3][2]));
        }
      }
    }
    const int next = tile + gridDim.x;  // the next tile's first loads fly during the epilogue
    if (next < tiles)
      preload(words + ((long long)next * 32 + lane) * 4, scales + next * 16, x, word_step,
              tiles, warp, groups, g, t, u, b, sc);

    if (t == 0) { partial[warp * 16 + g] = acc0; partial[warp * 16 + g + 8] = acc1; }
    __syncthreads();
    // Epilogue, a warp per row: the warps' partial sums, the LoRA update t . B[row] (scale
    // folded into B) and GELU, in fp32, rounded once.
    for (int r = warp; r < 16; r += WARPS) {
      float sum = lane < WARPS ? partial[lane * 16 + r] : 0.f;
      const unsigned short *b_row = lora_b + (long long)(tile * 16 + r) * b_stride;
      for (int i = lane; i < rank; i += 32)
        sum += bf16_to_float(lora_t[i]) * bf16_to_float(b_row[i]);
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        float other;
        asm volatile("shfl.sync.bfly.b32 %0, %1, %2, 0x1f, 0xffffffff;"
                     : "=f"(other) : "f"(sum), "r"(off));
        sum += other;
      }
      if (lane == 0) {
        if (gelu) sum = sum * 0.5f * (1.f + erff(sum * 0.7071067811865476f));
        out[tile * 16 + r] = float_to_bf16(sum);
      }
    }
    __syncthreads();  // partial is rewritten by the next tile
  }
}
"""
