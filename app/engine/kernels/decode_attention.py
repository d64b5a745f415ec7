"""Decode attention for ONE new query token per row: split-sequence ("flash-decoding") Triton.

Each decode step's attention on CUDA was `F.scaled_dot_product_attention` over the cache view
with a (B, 1, 1, T) mask: cuDNN at 8.4 us a Llama-3.1-8B layer for one row, 22 us at 32 rows
(bench/results/profile-serve-llama-mma-after-h100.txt), for ~2 MB of keys and values that an
H100 reads in under a microsecond. It also reads the whole graph bucket T for every row,
where row b only needs positions 0..positions[b].

Here phase 1 runs one program per (row, KV head, chunk of positions): all G query heads that
share the KV head go through the chunk together (padded to >= 16 rows for `tl.dot`), with an
online softmax in fp32, and write a partial (max, sum, acc[D]) in fp32. Chunks past the row's
own length load nothing and write the neutral partial (max -inf, sum 0). The number of chunks
comes from T and B*KV on the host so that even one row of Falcon-7B (one KV head) fills the
card. Phase 2 combines each (row, head)'s partials and rounds the result to bf16 once.
Scores are bf16 q times bf16 k in fp32 (exact products, as SDPA); the softmax weights go to
the P·V product in bf16 as in FlashAttention, the sums stay fp32.

Both launches allocate with `torch.empty`, read positions on the card and never sync with
the host, so a CUDA graph captures them and a replay follows positions written in place.
Off CUDA, without Triton, in other dtypes or for D > 256 the callers keep SDPA
(`decode_kernel_runs`), so CPU answers stay bit-equal to PEFT's.
"""

from __future__ import annotations

import math
import os

import torch

from app.engine.kernels import pdl
from app.engine.kernels.availability import sm_count, triton_available

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: SDPA serves
    triton = None

ENABLED = True
"""Switch: False sends both families' CUDA decode attention back to SDPA."""
BLOCK_N = 64
"""Cache positions each phase-1 iteration loads; chunks are whole multiples of it."""
MAX_HEAD_DIM = 256
WAVES = 2
"""Phase-1 programs wanted per multiprocessor (B*KV*SPLITS >= WAVES * SMs where T allows)."""
DEFAULT_SMS = 132
"""An H100's multiprocessors: the split count under the CPU interpreter (tests)."""


def decode_kernel_runs(q: torch.Tensor, keys: torch.Tensor) -> bool:
    """True where `decode_attention` serves: CUDA with Triton, bf16 q and cache, D <= 256."""
    return (
        ENABLED
        and triton is not None
        and triton_available(q.device)
        and q.dtype == torch.bfloat16
        and keys.dtype == torch.bfloat16
        and q.shape[-1] <= MAX_HEAD_DIM
    )


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Each row's new token attends to its cache positions 0..positions[b] inclusive.

    The same attention as SDPA with `decode_visibility(positions, T)` as the mask and scale
    1/sqrt(D); query head h reads KV head h // G.

    Args:
        q: (B, H, D) bf16, the rotated queries (made contiguous if not).
        k_cache: (B' >= B, KV, T, D) bf16 keys with unit last stride: the cache view
            `DecodeStep.cached` gives, or the layer's whole cache (rows 0..B-1 are read).
        v_cache: values, shaped like `k_cache` (its own strides).
        positions: (B,) integers on the card (a graph replay reads them in place); one at or
            past T sees the whole view, as the mask does (a graph's warm-up passes decode
            at the cache's last position over the shortest context).

    Returns:
        (B, H, D) bf16.

    Raises:
        ValueError: when the shapes do not fit together or a last stride is not 1.
    """
    _check(q, k_cache, v_cache, positions)
    return _launch(q.contiguous(), k_cache, v_cache, positions)


def _check(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor
) -> None:
    if q.dim() != 3 or k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            "decode_attention takes q (B, H, D) and caches (B', KV, T, D) of one shape; got "
            f"{tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}"
        )
    batch, heads, dim = q.shape
    rows, kv, _, cache_dim = k_cache.shape
    if cache_dim != dim or rows < batch or heads % kv != 0:
        raise ValueError(
            f"q {tuple(q.shape)} needs caches with D={dim}, at least {batch} rows and a KV "
            f"head count dividing {heads}; got {tuple(k_cache.shape)}"
        )
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("the key and value caches need a unit stride along D")
    if tuple(positions.shape) != (batch,):
        raise ValueError(f"positions must be ({batch},); got {tuple(positions.shape)}")


def split_plan(length: int, lanes: int, sms: int = DEFAULT_SMS) -> tuple[int, int]:
    """(splits, chunk) for a cache of `length` positions and `lanes` = B*KV programs per
    split: enough splits for WAVES programs per multiprocessor, chunks of whole BLOCK_Ns,
    and no split that starts past the cache. Static per graph bucket (shapes only)."""
    blocks = triton.cdiv(length, BLOCK_N)
    wanted = min(blocks, max(1, triton.cdiv(WAVES * sms, lanes)))
    chunk = triton.cdiv(blocks, wanted) * BLOCK_N
    return triton.cdiv(length, chunk), chunk


def _launch(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """Both phases on any device Triton runs on (CUDA, or CPU under TRITON_INTERPRET=1)."""
    batch, heads, dim = q.shape
    kv, length = k_cache.shape[1], k_cache.shape[2]
    groups = heads // kv
    sms = sm_count(q.device) if q.is_cuda else DEFAULT_SMS
    splits, chunk = split_plan(length, batch * kv, sms)
    block_d = max(16, triton.next_power_of_2(dim))
    scale_log2 = math.log2(math.e) / math.sqrt(dim)  # exp2 of log2-scaled scores
    interpreting = _interpreting()
    best = torch.empty(batch, heads, splits, dtype=torch.float32, device=q.device)
    total = torch.empty_like(best)
    acc = torch.empty(batch, heads, splits, dim, dtype=torch.float32, device=q.device)
    g_pad = max(16, triton.next_power_of_2(groups))
    _partials[(batch, kv, splits)](
        q, k_cache, v_cache, positions, best, total, acc,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), scale_log2, length, chunk,
        splits, HEADS=heads, G=groups, D=dim, G_PAD=g_pad, BLOCK_D=block_d, BLOCK_N=BLOCK_N,
        FP32_DOT=interpreting, STATIC_CHUNK=chunk if interpreting else 0,
        num_warps=8 if g_pad * block_d >= 8192 else 4,  # Falcon-7B's 128 x 64 tiles: 8
        **pdl.triton_options(q.device, batch),
    )  # fmt: skip
    out = torch.empty(batch, heads, dim, dtype=q.dtype, device=q.device)
    _combine[(batch, heads)](
        best, total, acc, out, out.stride(0), out.stride(1), splits,
        HEADS=heads, D=dim, SPLITS_PAD=max(2, triton.next_power_of_2(splits)),
        BLOCK_D=block_d, num_warps=1 if block_d <= 64 else 2, **pdl.triton_options(q.device, batch),
    )  # fmt: skip
    return out


def _interpreting() -> bool:
    """Under Triton's CPU interpreter (tests), whose `tl.dot` misreads bf16 operands and
    whose fp32 -> bf16 casts truncate: multiply fp32 copies there."""
    return os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _partials(
        q_ptr, k_ptr, v_ptr, pos_ptr, best_ptr, total_ptr, acc_ptr,
        q_sb, q_sh, k_sb, k_sh, k_st, v_sb, v_sh, v_st, scale_log2, length, chunk, splits,
        HEADS: tl.constexpr, G: tl.constexpr, D: tl.constexpr, G_PAD: tl.constexpr,
        BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, FP32_DOT: tl.constexpr,
        STATIC_CHUNK: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        pdl.start(PDL)
        b = tl.program_id(0).to(tl.int64)
        kv = tl.program_id(1).to(tl.int64)
        split = tl.program_id(2)
        g = tl.arange(0, G_PAD)
        d = tl.arange(0, BLOCK_D)
        g_ok, d_ok = g < G, d < D
        head = kv * G + g  # (G_PAD,) query heads sharing KV head `kv`
        q = tl.load(
            q_ptr + b * q_sb + head[:, None] * q_sh + d[None, :],
            mask=g_ok[:, None] & d_ok[None, :], other=0.0,
        )  # (G_PAD, BLOCK_D)  # fmt: skip
        if FP32_DOT:
            q = q.to(tl.float32)
        # row b sees 0..positions[b], and never past the view (SDPA's mask: all of it)
        seen = tl.minimum(tl.load(pos_ptr + b).to(tl.int32) + 1, length)
        start = split * chunk
        end = tl.minimum(start + chunk, seen)  # <= start: nothing to read, neutral partial
        best = tl.full((G_PAD,), float("-inf"), dtype=tl.float32)
        total = tl.zeros((G_PAD,), dtype=tl.float32)
        acc = tl.zeros((G_PAD, BLOCK_D), dtype=tl.float32)
        k_row = k_ptr + b * k_sb + kv * k_sh
        v_row = v_ptr + b * v_sb + kv * v_sh
        if FP32_DOT:  # the interpreter takes no tensor loop bounds: every block, guarded
            for offset in range(0, STATIC_CHUNK, BLOCK_N):
                if start + offset < end:
                    best, total, acc = _block(
                        q, k_row, v_row, k_st, v_st, start + offset, end, d, d_ok, best,
                        total, acc, scale_log2, BLOCK_N, FP32_DOT,
                    )  # fmt: skip
        else:
            for t0 in range(start, end, BLOCK_N):  # every block holds >= 1 visible position
                best, total, acc = _block(
                    q, k_row, v_row, k_st, v_st, t0, end, d, d_ok, best, total, acc,
                    scale_log2, BLOCK_N, FP32_DOT,
                )  # fmt: skip
        slot = (b * HEADS + head) * splits + split  # (G_PAD,) partial index
        tl.store(best_ptr + slot, best, mask=g_ok)
        tl.store(total_ptr + slot, total, mask=g_ok)
        tl.store(acc_ptr + slot[:, None] * D + d[None, :], acc, mask=g_ok[:, None] & d_ok[None, :])

    @triton.jit
    def _block(
        q, k_row, v_row, k_st, v_st, t0, end, d, d_ok, best, total, acc, scale_log2,
        BLOCK_N: tl.constexpr, FP32_DOT: tl.constexpr,
    ):  # fmt: skip
        """One block of positions t0.. (t0 < end) folded into the running softmax."""
        t = t0 + tl.arange(0, BLOCK_N)
        t_ok = t < end
        td_ok = t_ok[:, None] & d_ok[None, :]
        k = tl.load(k_row + t[:, None] * k_st + d[None, :], mask=td_ok, other=0.0)
        v = tl.load(v_row + t[:, None] * v_st + d[None, :], mask=td_ok, other=0.0)
        if FP32_DOT:
            scores = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(k))  # (G_PAD, BLOCK_N) fp32
        scores = tl.where(t_ok[None, :], scores * scale_log2, float("-inf"))
        top = tl.maximum(best, tl.max(scores, axis=1))  # finite: t0 is visible
        keep = tl.exp2(best - top)  # 0 on a split's first block (best = -inf)
        p = tl.exp2(scores - top[:, None])
        total = total * keep + tl.sum(p, axis=1)
        if FP32_DOT:
            acc = acc * keep[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            acc = acc * keep[:, None] + tl.dot(p.to(v.dtype), v)
        return top, total, acc

    @triton.jit
    def _combine(
        best_ptr, total_ptr, acc_ptr, out_ptr, out_sb, out_sh, splits,
        HEADS: tl.constexpr, D: tl.constexpr, SPLITS_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
        PDL: tl.constexpr,
    ):  # fmt: skip
        pdl.start(PDL)
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1).to(tl.int64)
        s = tl.arange(0, SPLITS_PAD)
        d = tl.arange(0, BLOCK_D)
        s_ok, d_ok = s < splits, d < D
        slot = (b * HEADS + h) * splits + s  # (SPLITS_PAD,)
        best = tl.load(best_ptr + slot, mask=s_ok, other=float("-inf"))
        total = tl.load(total_ptr + slot, mask=s_ok, other=0.0)
        top = tl.max(best, axis=0)  # finite: split 0 always holds position 0
        weight = tl.exp2(best - top)  # 0 for neutral partials
        acc = tl.load(
            acc_ptr + slot[:, None] * D + d[None, :], mask=s_ok[:, None] & d_ok[None, :],
            other=0.0,
        )  # (SPLITS_PAD, BLOCK_D)  # fmt: skip
        out = tl.sum(acc * weight[:, None], axis=0) / tl.sum(total * weight, axis=0)
        tl.store(out_ptr + b * out_sb + h * out_sh + d, out.to(out_ptr.dtype.element_ty), mask=d_ok)
