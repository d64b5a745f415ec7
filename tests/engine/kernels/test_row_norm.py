"""The one-row layer norm equals torch's: exactly where torch serves (CPU), and within a bf16
step under Triton's CPU interpreter (which truncates where the GPU rounds)."""

from __future__ import annotations

import textwrap

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels.row_norm import layer_norm_row
from tests.subprocess_python import run_json

CHECK = textwrap.dedent(
    """
    import json, torch
    from app.engine.kernels.row_norm import _launch
    torch.manual_seed(0)
    report = {}
    for width, dtype in ((4544, torch.bfloat16), (64, torch.float32), (300, torch.bfloat16)):
        x = (torch.randn(1, 1, width) * 3 + 1).to(dtype)
        w, b = torch.randn(width).to(dtype), torch.randn(width).to(dtype)
        got = _launch(x, w, b, 1e-5)
        want = torch.nn.functional.layer_norm(x.float(), (width,), w.float(), b.float(), 1e-5)
        rel = ((got.float() - want).norm() / want.norm()).item()
        report[f"{width}-{dtype}"] = [rel, list(got.shape), str(got.dtype)]
    print(json.dumps(report))
    """
)


def test_kernel_matches_torch_under_the_interpreter():
    report = run_json(CHECK)
    for key, (rel, shape, dtype) in report.items():
        width, wanted = key.split("-", 1)
        assert shape == [1, 1, int(width)] and dtype == wanted
        assert rel < (1e-6 if "float32" in key else 1e-2), (key, rel)


def test_torch_serves_off_cuda_and_for_several_rows():
    x = torch.randn(3, 64)
    w, b = torch.randn(64), torch.randn(64)
    assert torch.equal(layer_norm_row(x, w, b, 1e-5), F.layer_norm(x, (64,), w, b, 1e-5))
    row = x[:1]
    assert torch.equal(layer_norm_row(row, w, b, 1e-5), F.layer_norm(row, (64,), w, b, 1e-5))
