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
`mul.rn` forbids that fusion, so the sm_90 PTX now rounds where torch does (checked on the PTX in
tests/engine/test_rotary_cache.py, no GPU needed; bit-equality on a GPU is still to be measured).
Where the kernel does not run (CPU, several KV heads), the torch path serves.
"""

from __future__ import annotations

import os

import torch

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
        EXACT=os.environ.get("TRITON_INTERPRET") != "1",
    )  # fmt: skip
    return q


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
        EXACT: tl.constexpr,
    ):  # fmt: skip
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
