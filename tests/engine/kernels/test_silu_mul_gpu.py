"""The one-launch SiLU·mul on a GPU: torch's answer within one bf16 step (its exp may differ
from torch's in the last fp32 bits), on a joined gate/up output's halves at Llama-3.1-8B's
width; folded with the down projection's `h A.T`, h bit-equal to the unfused kernel's."""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA kernels"),
]

from app.engine.kernels import silu_mul as module  # noqa: E402


@pytest.mark.parametrize("rows", [1, 7, 32, 64])
def test_kernel_gives_torchs_activation(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "ENABLED", True)
    joined = (torch.randn(rows, 1, 2 * 14336, device="cuda") * 3).bfloat16()
    gate, up = joined[..., :14336], joined[..., 14336:]
    got = module.silu_mul(gate, up)
    want = torch.nn.functional.silu(gate) * up
    assert got.shape == want.shape and got.is_contiguous()
    steps = (got.float() - want.float()).abs() / want.float().abs().clamp_min(1e-30)
    assert steps.max().item() <= 2**-7 + 1e-6
    assert (got == want).float().mean().item() > 0.99


def test_folded_launch_gives_the_pairs_h_and_t(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.engine.kernels.low_rank_row import low_rank_row

    monkeypatch.setattr(module, "ENABLED", True)
    monkeypatch.setattr(module, "FOLD", True)
    joined = (torch.randn(1, 1, 2 * 14336, device="cuda") * 3).bfloat16()
    gate, up = joined[..., :14336], joined[..., 14336:]
    a = (torch.randn(64, 14336, device="cuda") / 120).bfloat16()
    assert module.fold_runs(gate, up, a)
    h, t = module.silu_mul_low_rank(gate, up, a)
    want_h = module.silu_mul(gate, up)
    assert h.shape == want_h.shape and torch.equal(h, want_h)
    want_t = low_rank_row(want_h, a)
    assert t.shape == want_t.shape == (1, 1, 64)
    assert ((t.float() - want_t.float()).norm() / want_t.float().norm()).item() < 1e-2
