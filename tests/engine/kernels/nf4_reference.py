"""References for the NF4 kernels: a bitsandbytes `Linear4bit` made from a seed, its weight
dequantized by bitsandbytes itself, and the relative error between two results."""

from __future__ import annotations

import bitsandbytes as bnb
import torch


def make_linear4bit(n: int, k: int, *, double_quant: bool, blocksize: int = 64, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    module = bnb.nn.Linear4bit(
        k, n, bias=False, compute_dtype=torch.bfloat16, compress_statistics=double_quant,
        quant_type="nf4", device="meta",
    )  # fmt: skip
    weight = torch.randn(n, k, generator=generator) * 0.05
    module.weight = bnb.nn.Params4bit(
        weight, requires_grad=False, compress_statistics=double_quant, quant_type="nf4",
        blocksize=blocksize,
    ).to("cpu")  # fmt: skip
    return module


def bnb_dense(module) -> torch.Tensor:
    weight = module.weight
    return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()


def bnb_dense_flat(module) -> torch.Tensor:
    """bitsandbytes' generic dequantizer, which walks absmax blocks over the flattened weight.

    That is how its quantizer (and its CUDA kernels) lay blocks out. Its AVX512 CPU kernel
    restarts blocks at every row instead, which differs once a block straddles two rows.
    """
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    weight = module.weight
    state = weight.quant_state
    absmax = bnb.functional.dequantize_blockwise(state.absmax, state.state2) + state.offset
    code = bnb.functional.get_4bit_type("nf4", device="cpu")
    flat = weight.data.reshape(-1)
    return _dequantize_4bit_compute(flat, absmax, code, state.blocksize, state.shape, torch.float32)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()
