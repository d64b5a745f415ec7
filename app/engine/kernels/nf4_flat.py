"""bitsandbytes NF4 projections with the double quantization undone once, at load.

Double quantization stores each 64-weight block's scale in 8 bits, which saves 0.37 bits per
weight but makes every forward dequantize the scales first: one extra kernel per projection
per step (128 per Falcon-7B token), which in a CUDA-graphed decode step costs about as much
as the arithmetic it prepares. Keeping the scales as float32 costs 0.06 bytes per weight
(~0.4 GB for Falcon-7B) and gives the same numbers: the scales are the ones bitsandbytes
itself would compute on every call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def flat_nf4_linear(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A forward for a bitsandbytes `Linear4bit` that skips the per-call scale dequantization;
    None for anything else (the module then runs as loaded)."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import QuantState, dequantize_blockwise

    if not isinstance(module, bnb.nn.Linear4bit):
        return None
    state = module.weight.quant_state  # type: ignore[attr-defined]  # bnb's Params4bit
    if state is None or not state.nested:
        return None
    absmax = (dequantize_blockwise(state.absmax, state.state2) + state.offset).float()
    flat = QuantState(
        absmax=absmax,
        shape=state.shape,
        code=state.code,
        blocksize=state.blocksize,
        quant_type=state.quant_type,
        dtype=state.dtype,
    )
    weight = module.weight
    compute_dtype = module.compute_dtype or state.dtype
    bias = None if module.bias is None else module.bias.to(compute_dtype)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return bnb.matmul_4bit(x.to(compute_dtype), weight.t(), bias=bias, quant_state=flat)

    return forward
