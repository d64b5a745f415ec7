"""Weight-only int4 and int8 one-row matmuls on CPU through torch's own kernels.

torch ships a CPU int4 GEMM (`_weight_int4pack_mm_for_cpu`, gpt-fast's "tinygemm" layout):
4-bit weights in groups of 32 inputs, each group with a scale and a zero point, computing
`w = (q - 8) * scale + zero` in float32 registers. That is llama.cpp's Q4_1 block exactly
(`w = q * d + m` per 32 weights, so `zero = m + 8 d`), which is how the embedded default
(SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF) was stored: its dequantized float32 weights
sit on 16 evenly spaced levels per group, and packing them back into int4 loses nothing but
the rounding of scale and zero to bf16 (the kernel's only fast path is bf16 activations with
bf16 scales; float32 and float16 run a scalar loop about 50x slower).

`fit_grid` finds those levels; `Int4Linear` packs them; `Int8Linear` is torch's per-channel
int8 kernel (`_weight_int8pack_mm`), used for the tied embedding/lm_head where llama.cpp keeps
Q8_0. Shapes the kernels need: inputs a multiple of 32, outputs a multiple of 16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROUP = 32
"""Inputs per scale/zero pair: Q4_1's block, and the finest group the kernel takes."""
EXACT_TOLERANCE = 1e-3
"""A weight counts as on its group's grid when it lies within this fraction of a step of a
level: float32 rounding of `q * d + m` is ~1e-6 of a step; a float weight is off by up to 0.5."""
LEVELS = 15
"""Steps between a group's lowest and highest level (4 bits: 16 levels)."""
CHUNK_BYTES = 1 << 20
"""Float32 weight rows `fit_grid` works through at once (well inside a core's L2 cache)."""
SAMPLE_ROWS = 64
"""Rows `looks_4bit` checks: a float model fails on its first row, a 4-bit one passes all."""


@dataclass(frozen=True)
class Int4Grid:
    """A (out, in) weight as `q * scale + low`, q in 0..15, one (scale, low) per 32 inputs."""

    q: torch.Tensor
    """(out, in) uint8 levels."""
    scale: torch.Tensor
    """(out, in / 32) float32 step between levels."""
    low: torch.Tensor
    """(out, in / 32) float32 lowest level."""
    max_error: float
    """Largest distance of a weight from its level, as a fraction of its group's step
    (0 for weights that came from a 4-bit file; up to 0.5 for float weights)."""

    @property
    def exact(self) -> bool:
        return self.max_error <= EXACT_TOLERANCE

    def dequantized(self) -> torch.Tensor:
        """The float32 weight these levels stand for, as the 4-bit file meant it."""
        out, inp = self.q.shape
        levels = self.q.reshape(out, inp // GROUP, GROUP).float()
        return (levels * self.scale[..., None] + self.low[..., None]).reshape(out, inp)


def shape_fits(out_features: int, in_features: int) -> bool:
    """Whether torch's int4 CPU kernel takes a weight of this shape."""
    return in_features % GROUP == 0 and out_features % 16 == 0


def fit_grid(weight: torch.Tensor) -> Int4Grid:
    """Levels, steps and offsets of `weight` (out, in) per group of 32 inputs.

    Each group's lowest weight is level 0 and its highest level 15, as Q4_1 quantizes (the
    lowest weight maps to 0, the highest to 15); a group of equal weights gets step 0. Rows
    are taken `CHUNK_BYTES` at a time, so the passes over them stay in cache.
    """
    out, inp = weight.shape
    rows = max(1, CHUNK_BYTES // (4 * inp))
    parts = [_fit_rows(weight[start : start + rows]) for start in range(0, out, rows)]
    if len(parts) == 1:
        return parts[0]
    return concat(parts)


def _fit_rows(weight: torch.Tensor) -> Int4Grid:
    out, inp = weight.shape
    groups = weight.detach().float().reshape(out, inp // GROUP, GROUP)  # (N, K/32, 32)
    low, high = torch.aminmax(groups, dim=-1)  # (N, K/32)
    scale = (high - low) / LEVELS
    inverse = torch.where(scale > 0, 1 / scale, torch.zeros_like(scale))[..., None]
    position = torch.addcmul(-low[..., None] * inverse, groups, inverse)  # steps above the lowest
    q = position.round()
    error = position.sub_(q).abs_().amax().item() if weight.numel() else 0.0
    return Int4Grid(q.clamp_(0, LEVELS).to(torch.uint8).reshape(out, inp), scale, low, error)


def looks_4bit(weight: torch.Tensor) -> bool:
    """Quick test on the first rows: could this weight have come from a 4-bit file?"""
    out, inp = weight.shape
    if not shape_fits(out, inp):
        return False
    return fit_grid(weight[:SAMPLE_ROWS]).exact


def round_to_int4(weight: torch.Tensor) -> torch.Tensor:
    """`weight` rounded to 16 levels per group of 32 (Q4_1's quantization), same dtype."""
    return fit_grid(weight).dequantized().to(weight.dtype)


class Int4Linear:
    """`x @ W.T` with W packed as int4 in groups of 32 (bf16 in, bf16 out).

    Args:
        grid: the weight's levels (`fit_grid`); several projections that read the same input
            may be fused by concatenating their grids' rows first (`concat`).
    """

    def __init__(self, grid: Int4Grid) -> None:
        out, inp = grid.q.shape
        if not shape_fits(out, inp):
            raise ValueError(f"int4 kernel needs in % 32 == 0 and out % 16 == 0, got {out}x{inp}")
        # The kernel computes (q - 8) * scale + zero, so zero = low + 8 * scale.
        zero = grid.low + 8 * grid.scale
        pairs = torch.stack([grid.scale, zero], -1)  # (N, K/32, 2)
        self.scales_zeros = pairs.transpose(0, 1).contiguous().to(torch.bfloat16)  # (K/32, N, 2)
        levels = grid.q.to(torch.int32)  # the packing op takes int32
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(levels, 1)
        self.out_features, self.in_features = out, inp

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) bf16 → (..., out) bf16 (contiguous rows)."""
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu
        if x.dim() == 2:
            return mm(x, self.packed, GROUP, self.scales_zeros)
        out = mm(x.reshape(-1, self.in_features), self.packed, GROUP, self.scales_zeros)
        return out.view(*x.shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """(out, in) float32: the weight as the kernel sees it (bf16 scale and zero)."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return self(eye).float().T.contiguous()


def concat(grids: list[Int4Grid]) -> Int4Grid:
    """One grid whose rows are `grids`' rows in order (projections fused into one matmul)."""
    return Int4Grid(
        torch.cat([g.q for g in grids]),
        torch.cat([g.scale for g in grids]),
        torch.cat([g.low for g in grids]),
        max(g.max_error for g in grids),
    )


class Int8Linear:
    """`x @ W.T` with W as int8 with one bf16 scale per output row (bf16 in, bf16 out)."""

    def __init__(self, weight: torch.Tensor) -> None:
        wide = weight.detach().float()
        scale = wide.abs().amax(1).clamp(min=1e-12) / 127  # (N,)
        self.weight = torch.round(wide / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        self.scales = scale.to(torch.bfloat16)
        self.out_features, self.in_features = weight.shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scales)
        return out.view(*x.shape[:-1], self.out_features)
