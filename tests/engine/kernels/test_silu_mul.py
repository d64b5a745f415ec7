"""Llama's `silu(gate) * up` in one launch: torch's answer where torch serves (CPU, the switch
off), and under Triton's CPU interpreter the same within its rounding, on the halves of a
joined gate/up output (strided views)."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels import silu_mul as module
from app.engine.kernels.low_rank_row import low_rank_row
from app.engine.kernels.silu_mul import silu_mul, silu_mul_low_rank
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


FOLD_CHECK = textwrap.dedent(
    """
    import json, torch
    from app.engine.kernels.silu_mul import _launch, _launch_fold
    torch.manual_seed(0)
    report = {}
    for width, rank in ((1024, 16), (2500, 24)):  # one block, and three with a ragged end
        joined = (torch.randn(1, 1, 2 * width) * 3).bfloat16()
        gate, up = joined[..., :width], joined[..., width:]
        wider = (torch.randn(2 * rank, width + 40) / width**0.5).bfloat16()
        a = wider[rank:, :width]  # rows of a wider layout: the row stride is not the width
        h, t = _launch_fold(gate, up, a)
        want_h = _launch(gate, up)
        want_t = torch.nn.functional.linear(want_h.float(), a.float())
        rel = ((t.float() - want_t).norm() / want_t.norm()).item()
        report[f"{width}-{rank}"] = [torch.equal(h, want_h), rel, list(h.shape), list(t.shape)]
    print(json.dumps(report))
    """
)


def test_folded_kernel_gives_the_pairs_h_and_t_under_the_interpreter():
    report = run_json(FOLD_CHECK, interpret=True)
    assert len(report) == 2
    for key, (h_equal, rel, h_shape, t_shape) in report.items():
        width, rank = (int(v) for v in key.split("-"))
        assert h_equal, key  # the same arithmetic as the unfused kernel, op for op
        assert h_shape == [1, 1, width] and t_shape == [1, 1, rank], key
        assert rel < 1e-2, (key, rel)  # t from the rounded h, fp32 sums in another order


@pytest.mark.parametrize("fold", [False, True])
def test_the_pair_serves_off_cuda_and_for_several_rows(fold, monkeypatch):
    monkeypatch.setattr(module, "FOLD", fold)
    a = torch.randn(8, 16).bfloat16()
    for rows in (1, 3):
        joined = torch.randn(rows, 1, 32).bfloat16()
        gate, up = joined[..., :16], joined[..., 16:]
        assert not module.fold_runs(gate, up, a)
        h, t = silu_mul_low_rank(gate, up, a)
        assert torch.equal(h, F.silu(gate) * up) and torch.equal(t, low_rank_row(h, a))
