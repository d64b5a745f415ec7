"""Llama's `silu(gate) * up` in one launch: torch's answer where torch serves (CPU, the switch
off), and under Triton's CPU interpreter the same within its rounding, on the halves of a
joined gate/up output (strided views)."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels.silu_mul import silu_mul
from tests.subprocess_python import run_json

CHECK = textwrap.dedent(
    """
    import json, torch
    from app.engine.kernels.silu_mul import _launch
    torch.manual_seed(0)
    report = {}
    for rows, width in ((1, 2048), (5, 1100), (32, 64)):
        joined = (torch.randn(rows, 2 * width) * 3).bfloat16()  # gate | up side by side
        gate, up = joined[:, :width], joined[:, width:]
        got = _launch(gate, up)
        want = torch.nn.functional.silu(gate) * up
        steps = ((got.float() - want.float()).abs() / want.float().abs().clamp_min(1e-30))
        report[f"{rows}-{width}"] = [
            steps.max().item(), list(got.shape), got.is_contiguous(),
            (got == want).float().mean().item(),
        ]
    print(json.dumps(report))
    """
)


def test_kernel_gives_torchs_activation_under_the_interpreter():
    report = run_json(CHECK, interpret=True)
    assert len(report) == 3
    for key, (worst, shape, contiguous, same) in report.items():
        rows, width = (int(v) for v in key.split("-"))
        assert shape == [rows, width] and contiguous
        # two bf16 steps at most: the interpreter truncates both roundings (SiLU, product)
        assert worst <= 2**-6 + 1e-6, (key, worst)
        assert same > 0.1, (key, same)  # not a constant: many values exactly torch's


def test_torch_serves_off_cuda_bit_for_bit():
    joined = torch.randn(3, 2, 16).bfloat16()
    gate, up = joined[..., :8], joined[..., 8:]
    assert torch.equal(silu_mul(gate, up), F.silu(gate) * up)
    with pytest.raises(ValueError, match="must match"):
        silu_mul(gate, up[..., :4])
