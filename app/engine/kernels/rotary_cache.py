"""A decode step's rotary embedding and KV-cache write for multi-query Falcon, in one launch.

In torch a decode step's attention input is a dozen small kernels per layer: slicing the fused
projection, `q * cos`, `rotate_half` (a negation and a concatenation), `* sin`, the add, and two
indexed writes into the cache; on an H200 those launches were about 0.4 ms of a 5 ms batch-1
token (bench/results/profile-serve-hybrid.txt). `rotate_into_cache` does all of it in one
Triton launch: one program per (row, head) rotates its 64 values, query heads go to a fresh
(B, H, 1, D) tensor, the key head and the value head straight into the cache at the row's
position. The arithmetic is written as `FalconBatch._split_rotated` does it (`q * cos` and
`rotate_half(q) * sin` each rounded to the activation dtype, then their sum). Left alone, the
compiler fused the second product and the sum into one bf16 FMA (one rounding fewer), and on an
H200 12.6 % of bf16 outputs differed from torch's by a step or two of the last bit; `_product`'s
`mul.rn` forbids that fusion, so the sm_90 PTX now rounds where torch does (checked on the PTX
in tests/engine/kernels/test_rotary_cache.py, no GPU needed; bit-equality on a GPU is still to
be measured). Where the kernel does not run (CPU, several KV heads), the torch path serves.

`rotate_gqa_into_cache` is the same for the Llama family, whose q, k and v come from three
projections and whose several KV heads each serve a group of query heads: one program per
(row, head) over the H query heads, then the KV key heads (rotated into the cache), then the
KV value heads (copied into it), as `LlamaBatch._rotate` and its indexed cache writes do.
"""

from __future__ import annotations

import os

import torch

from app.engine.kernels import pdl

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU installs: FalconBatch's torch path serves
    triton = None


def kernel_runs(qkv: torch.Tensor, n_kv: int) -> bool:
    """True where `rotate_into_cache` runs: CUDA with triton, one KV head (multi-query)."""
    return triton is not None and qkv.is_cuda and n_kv == 1


def rotate_into_cache(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    n_heads: int,
) -> torch.Tensor:
    """Rotated queries (B, H, 1, D); the rotated key and the value are written into the caches.

    Args:
        qkv: (B, 1, (H + 2) * D) fused projection of one token per row.
        cos, sin: (T, D) rotary tables; row b uses entry `positions[b]`.
        positions: (B,) where each row's token goes.
        k_cache, v_cache: one layer's caches, (slots, 1, T, D); row b is slot b.
        n_heads: H, the query heads.
    """
    batch, _, width = qkv.shape
    head_dim = width // (n_heads + 2)
    q = torch.empty(batch, n_heads, 1, head_dim, dtype=qkv.dtype, device=qkv.device)
    _rotary_cache[(batch, n_heads + 2)](
        qkv, cos, sin, positions, q, k_cache, v_cache,
        qkv.stride(0), k_cache.stride(0), k_cache.stride(2), H=n_heads, D=head_dim,
        EXACT=os.environ.get("TRITON_INTERPRET") != "1", **pdl.triton_options(qkv.device, batch),
    )  # fmt: skip
    return q


def gqa_kernel_runs(x: torch.Tensor, head_dim: int) -> bool:
    """True where `rotate_gqa_into_cache` runs for activations `x`: CUDA with triton, and a
    power-of-two head size."""
    return triton is not None and x.is_cuda and head_dim & (head_dim - 1) == 0


def rotate_gqa_into_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
) -> torch.Tensor:
    """Rotated queries (B, H, 1, D), contiguous; the rotated keys and the values are written
    into the caches at each row's position.

    Args:
        q: (B, H, 1, D) queries of one token per row (any strides with unit last stride).
        k, v: (B, KV, 1, D) keys and values, likewise.
        cos, sin: (T, D) rotary tables; row b uses entry `positions[b]`.
        positions: (B,) where each row's token goes.
        k_cache, v_cache: one layer's caches, (slots, KV, T, D); row b is slot b.
    """
    batch, heads, _, head_dim = q.shape
    kv = k.shape[1]
    out = torch.empty(batch, heads, 1, head_dim, dtype=q.dtype, device=q.device)
    _rotary_gqa[(batch, heads + 2 * kv)](
        q, k, v, cos, sin, positions, out, k_cache, v_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        H=heads, KV=kv, D=head_dim, EXACT=os.environ.get("TRITON_INTERPRET") != "1",
        **pdl.triton_options(q.device, batch),
    )  # fmt: skip
    return out


if triton is not None:

    @triton.jit
    def _product(a, b, EXACT: tl.constexpr):
        """a * b in fp32; with EXACT a `mul.rn`, which the compiler may not fuse into an FMA.

        Left to itself the compiler turns `round(a * b) + other` into one bf16 FMA (PTX for
        sm_90 showed `fma.rn.bf16`), skipping the rounding torch does after the product.
        Triton's CPU interpreter runs no inline assembly, hence the plain product there.
        """
        if EXACT:
            return tl.inline_asm_elementwise(
                "mul.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32, is_pure=True, pack=1
            )
        else:
            return a * b

    @triton.jit
    def _rotary_cache(
        qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_ptr, v_ptr,
        stride_row, stride_slot, stride_pos, H: tl.constexpr, D: tl.constexpr,
        EXACT: tl.constexpr, PDL: tl.constexpr,
    ):  # fmt: skip
        pdl.start(PDL)
        row = tl.program_id(0)
        head = tl.program_id(1)  # 0..H-1 queries, H the key, H + 1 the value
        pos = tl.load(pos_ptr + row)
        i = tl.arange(0, D)
        src = qkv_ptr + row * stride_row + head * D
        x = tl.load(src + i)
        cache_at = row * stride_slot + pos * stride_pos + i
        if head == H + 1:
            tl.store(v_ptr + cache_at, x)
        else:
            partner = tl.load(src + (i + D // 2) % D).to(tl.float32)
            rotated = tl.where(i < D // 2, -partner, partner)  # rotate_half (exact in fp32)
            c = tl.load(cos_ptr + pos * D + i)
            s = tl.load(sin_ptr + pos * D + i)
            first = _product(x.to(tl.float32), c.to(tl.float32), EXACT).to(x.dtype)
            second = _product(rotated, s.to(tl.float32), EXACT).to(x.dtype)
            out = (first.to(tl.float32) + second.to(tl.float32)).to(x.dtype)
            if head == H:
                tl.store(k_ptr + cache_at, out)
            else:
                tl.store(q_ptr + (row * H + head) * D + i, out)

    @triton.jit
    def _rotated(src, cos_ptr, sin_ptr, pos, D: tl.constexpr, EXACT: tl.constexpr):
        """`x * cos + rotate_half(x) * sin` of one head at `src`, rounded as torch does."""
        i = tl.arange(0, D)
        x = tl.load(src + i)
        partner = tl.load(src + (i + D // 2) % D).to(tl.float32)
        rotated = tl.where(i < D // 2, -partner, partner)  # rotate_half (exact in fp32)
        c = tl.load(cos_ptr + pos * D + i)
        s = tl.load(sin_ptr + pos * D + i)
        first = _product(x.to(tl.float32), c.to(tl.float32), EXACT).to(x.dtype)
        second = _product(rotated, s.to(tl.float32), EXACT).to(x.dtype)
        return (first.to(tl.float32) + second.to(tl.float32)).to(x.dtype)

    @triton.jit
    def _rotary_gqa(
        q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, pos_ptr, out_ptr, kc_ptr, vc_ptr,
        sq_row, sq_head, sk_row, sk_head, sv_row, sv_head, s_slot, s_head, s_pos,
        H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, EXACT: tl.constexpr,
        PDL: tl.constexpr,
    ):  # fmt: skip
        pdl.start(PDL)
        row = tl.program_id(0)
        head = tl.program_id(1)  # 0..H-1 queries, then KV keys, then KV values
        pos = tl.load(pos_ptr + row)
        i = tl.arange(0, D)
        if head < H:
            out = _rotated(q_ptr + row * sq_row + head * sq_head, cos_ptr, sin_ptr, pos, D, EXACT)
            tl.store(out_ptr + (row * H + head) * D + i, out)
        elif head < H + KV:
            kv = head - H
            out = _rotated(k_ptr + row * sk_row + kv * sk_head, cos_ptr, sin_ptr, pos, D, EXACT)
            tl.store(kc_ptr + row * s_slot + kv * s_head + pos * s_pos + i, out)
        else:
            kv = head - H - KV
            value = tl.load(v_ptr + row * sv_row + kv * sv_head + i)
            tl.store(vc_ptr + row * s_slot + kv * s_head + pos * s_pos + i, value)
