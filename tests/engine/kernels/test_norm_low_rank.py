"""The folded norm + low-rank launch gives the unfused pair's (h, t): under Triton's CPU
interpreter h bit-equal to the unfused norm kernels run there too (the interpreter truncates
where the GPU rounds, for both alike) and t within fp32 summation order of `h A.T`; off CUDA
(and for several rows) the pair itself, bit for bit."""

from __future__ import annotations

import textwrap

import pytest
import torch

from app.engine.kernels import norm_low_rank as module
from app.engine.kernels.low_rank_row import low_rank_row
from app.engine.kernels.norm_low_rank import RowNorm, layer_norm_low_rank, rms_norm_low_rank
from app.engine.kernels.row_norm import layer_norm_row, rms_norm_rows
from tests.subprocess_python import run_json

CHECK = textwrap.dedent(
    """
    import json, torch
    from app.engine.kernels import row_norm
    from app.engine.kernels.norm_low_rank import _launch
    torch.manual_seed(0)
    report = {}
    # Llama-like (RMSNorm, R = 3 parts x rank 8) and Falcon-like (layer norm, 2 parts x 8)
    # shapes at a small width, and at widths that are not a power of two.
    cases = (("llama", True, 512, 24), ("llama", True, 300, 24),
             ("falcon", False, 568, 16), ("falcon", False, 512, 16))
    for name, rms, width, rank in cases:
        for dtype in (torch.bfloat16, torch.float32):
            x = (torch.randn(1, 1, width) * 3 + 1).to(dtype)
            w, b = torch.randn(width).to(dtype), torch.randn(width).to(dtype)
            wider = (torch.randn(2 * rank, width + 40) / width**0.5).to(dtype)
            a = wider[rank:, :width]  # rows of a wider layout: the row stride is not the width
            h, t = _launch(x, w, None if rms else b, 1e-5, a, rms=rms)
            if rms:
                want_h = row_norm._launch_rms(x, w, 1e-5)
            else:
                want_h = row_norm._launch(x, w, b, 1e-5)
            want_t = torch.nn.functional.linear(want_h.float(), a.float())
            rel = ((t.float() - want_t).norm() / want_t.norm()).item()
            report[f"{name}-{width}-{rank}-{dtype}"] = {
                "h_equal": torch.equal(h, want_h), "rel": rel, "h": [list(h.shape), str(h.dtype)],
                "t": [list(t.shape), str(t.dtype)],
            }
    print(json.dumps(report))
    """
)


def test_kernel_matches_the_unfused_pair_under_the_interpreter() -> None:
    report = run_json(CHECK, interpret=True)
    assert len(report) == 8
    for key, got in report.items():
        _, width, rank, dtype = key.split("-", 3)
        assert got["h_equal"], key
        assert got["h"] == [[1, 1, int(width)], dtype], key
        assert got["t"] == [[1, 1, int(rank)], dtype], key
        assert got["rel"] < (1e-5 if "float32" in key else 1e-2), (key, got["rel"])


@pytest.mark.parametrize("enabled", [False, True])
def test_the_unfused_pair_serves_off_cuda_and_for_several_rows(
    enabled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "ENABLED", enabled)
    torch.manual_seed(0)
    w, b = torch.randn(64, dtype=torch.bfloat16), torch.randn(64, dtype=torch.bfloat16)
    a = torch.randn(24, 64, dtype=torch.bfloat16)
    for x in (torch.randn(1, 1, 64, dtype=torch.bfloat16), torch.randn(3, 1, 64).bfloat16()):
        assert not module.fold_runs(x, a)
        h, t = rms_norm_low_rank(x, w, 1e-5, a)
        want = rms_norm_rows(x, w, 1e-5)
        assert torch.equal(h, want) and torch.equal(t, low_rank_row(want, a))
        h, t = layer_norm_low_rank(x, w, b, 1e-5, a)
        want = layer_norm_row(x, w, b, 1e-5)
        assert torch.equal(h, want) and torch.equal(t, low_rank_row(want, a))
        h, t = layer_norm_low_rank(x, w, None, 1e-5, a)  # no bias: torch's layer norm
        want = layer_norm_row(x, w, None, 1e-5)
        assert torch.equal(h, want) and torch.equal(t, low_rank_row(want, a))


def test_a_row_norm_runs_the_unfused_norm_and_folds_the_same_pair() -> None:
    torch.manual_seed(0)
    x, w, b, a = torch.randn(1, 1, 32), torch.randn(32), torch.randn(32), torch.randn(8, 32)
    rms, layer = RowNorm(w, 1e-6), RowNorm.layer(w, b, 1e-5)
    assert torch.equal(rms(x), rms_norm_rows(x, w, 1e-6))
    assert torch.equal(layer(x), layer_norm_row(x, w, b, 1e-5))
    for norm in (rms, layer):
        h, t = norm.fold(x, a)
        assert torch.equal(h, norm(x)) and torch.equal(t, low_rank_row(norm(x), a))
