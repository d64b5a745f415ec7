"""The one-row layer norm and RMSNorm equal torch's (transformers' for RMSNorm): exactly where
torch serves (CPU), and within a bf16 step under Triton's CPU interpreter (which truncates
where the GPU rounds)."""

from __future__ import annotations

import textwrap

import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels.row_norm import layer_norm_row, rms_norm_rows
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
    report = run_json(CHECK, interpret=True)
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


RMS_CHECK = textwrap.dedent(
    """
    import json, torch
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from app.engine.kernels.row_norm import _launch_rms
    torch.manual_seed(0)
    report = {}
    for width, dtype, rows in ((4096, torch.bfloat16, 1), (64, torch.float32, 1),
                               (576, torch.bfloat16, 1), (576, torch.bfloat16, 5)):
        x = (torch.randn(rows, 1, width) * 3 + 1).to(dtype)
        x[-1] *= 40  # each row is normalised by its own mean square
        norm = LlamaRMSNorm(width, eps=1e-5).to(dtype)
        norm.weight.data = torch.randn(width).to(dtype)
        got = _launch_rms(x, norm.weight.data, 1e-5)
        want = norm(x)
        rel = ((got.float() - want.float()).norm() / want.float().norm()).item()
        report[f"{rows}-{width}-{dtype}"] = [rel, list(got.shape), str(got.dtype)]
    print(json.dumps(report))
    """
)


def test_rms_kernel_matches_transformers_under_the_interpreter():
    report = run_json(RMS_CHECK, interpret=True)
    assert len(report) == 4
    for key, (rel, shape, dtype) in report.items():
        rows, width, wanted = key.split("-", 2)
        assert shape == [int(rows), 1, int(width)] and dtype == wanted
        assert rel < (1e-6 if "float32" in key else 1e-2), (key, rel)


def test_rms_torch_path_is_transformers_rms_norm_bit_for_bit():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(64, eps=1e-6)
    norm.weight.data = torch.randn(64)
    for x in (torch.randn(3, 5, 64), torch.randn(1, 1, 64), torch.randn(2, 64).bfloat16()):
        weight = norm.weight.data.to(x.dtype)
        norm.weight.data = weight
        assert torch.equal(rms_norm_rows(x, weight, 1e-6), norm(x))
