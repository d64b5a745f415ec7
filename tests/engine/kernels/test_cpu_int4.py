"""torch's CPU int4/int8 kernels as `kernels/cpu_int4.py` packs them: a weight from a 4-bit file
is found exact and reproduced, a float weight is not mistaken for one."""

from __future__ import annotations

import torch

from app.engine.kernels.cpu_int4 import (
    Int4Linear,
    Int8Linear,
    concat,
    fit_grid,
    looks_4bit,
    round_to_int4,
    shape_fits,
)


def q4_1(out: int, inp: int, seed: int = 0) -> torch.Tensor:
    """A float32 weight as a Q4_1 file stores it: `q * d + m` per 32 inputs, d and m fp16."""
    generator = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (out, inp // 32, 32), generator=generator).float()
    q[..., 0], q[..., 1] = 0, 15  # Q4_1 maps each group's lowest weight to 0, highest to 15
    d = (torch.rand(out, inp // 32, 1, generator=generator) * 0.01).half().float()
    m = (-8 * d + torch.randn(out, inp // 32, 1, generator=generator) * 1e-3).half().float()
    return (q * d + m).reshape(out, inp)


def test_a_4bit_weight_is_found_exact_and_a_float_one_is_not() -> None:
    weight = q4_1(64, 128)
    grid = fit_grid(weight)
    assert grid.exact and grid.max_error < 1e-4
    assert torch.allclose(grid.dequantized(), weight, rtol=0, atol=1e-7)
    assert looks_4bit(weight)
    noisy = torch.randn(64, 128)
    assert not fit_grid(noisy).exact and not looks_4bit(noisy)
    rounded = round_to_int4(noisy)
    assert fit_grid(rounded).exact
    assert torch.allclose(round_to_int4(rounded), rounded, rtol=0, atol=1e-6)


def test_int4_linear_reproduces_the_weight_up_to_bf16_scales() -> None:
    """The kernel's product equals a float32 matmul on the same 4-bit weight, the only
    differences being bf16 scale/zero and bf16 input and output."""
    weight = q4_1(96, 256, seed=1)
    linear = Int4Linear(fit_grid(weight))
    x = torch.randn(3, 256).to(torch.bfloat16)
    expected = x.float() @ weight.T
    got = linear(x).float()
    assert got.shape == (3, 96) and got.dtype == torch.float32
    scale = expected.abs().amax()
    assert (got - expected).abs().amax() <= 0.01 * scale
    step = fit_grid(weight).scale.amax()
    assert (linear.dequantized() - weight).abs().amax() <= step / 16 + 0.01 * weight.abs().amax()


def test_fused_rows_equal_each_projection_alone() -> None:
    first, second = q4_1(32, 64, seed=2), q4_1(48, 64, seed=3)
    fused = Int4Linear(concat([fit_grid(first), fit_grid(second)]))
    x = torch.randn(1, 64).to(torch.bfloat16)
    alone = torch.cat([Int4Linear(fit_grid(first))(x), Int4Linear(fit_grid(second))(x)], -1)
    assert fused(x).equal(alone)


def test_int8_head_is_close_to_float() -> None:
    weight = torch.randn(160, 64)
    x = torch.randn(1, 64).to(torch.bfloat16)
    expected = x.float() @ weight.T
    got = Int8Linear(weight)(x).float()
    assert (got - expected).abs().amax() <= 0.02 * expected.abs().amax()


def test_shapes_the_kernel_takes() -> None:
    assert shape_fits(576, 1536) and shape_fits(192, 576)
    assert not shape_fits(576, 100) and not shape_fits(24, 64)
    assert not looks_4bit(torch.zeros(24, 64))
