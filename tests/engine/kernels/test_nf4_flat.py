"""NF4 with the scales' double quantization undone at load computes what bitsandbytes does."""

from __future__ import annotations

import pytest
import torch

from app.engine.kernels.nf4_flat import flat_nf4_linear


def linear4bit(double_quant: bool) -> torch.nn.Module:
    import bitsandbytes as bnb

    torch.manual_seed(0)
    module = bnb.nn.Linear4bit(
        256, 192, bias=False, compute_dtype=torch.float32, compress_statistics=double_quant,
        quant_type="nf4", device="meta",
    )  # fmt: skip
    module.weight = bnb.nn.Params4bit(
        torch.randn(192, 256), requires_grad=False, compress_statistics=double_quant,
        quant_type="nf4",
    ).to("cpu")  # fmt: skip
    return module


@pytest.mark.parametrize("rows", [1, 5])
def test_flat_scales_give_bitsandbytes_results(rows: int) -> None:
    module = linear4bit(double_quant=True)
    forward = flat_nf4_linear(module)
    assert forward is not None
    x = torch.randn(rows, 256)
    expected = module(x)
    got = forward(x)
    assert got.shape == expected.shape == (rows, 192)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_only_double_quantized_nf4_is_rewritten() -> None:
    assert flat_nf4_linear(linear4bit(double_quant=False)) is None
    assert flat_nf4_linear(torch.nn.Linear(8, 8, bias=False)) is None
