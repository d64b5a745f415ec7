"""The one-row low-rank kernel gives `F.linear(x, A)`: exactly where torch serves (CPU), and
within a bf16 step under Triton's CPU interpreter (fp32 sums in another order)."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels.low_rank_row import low_rank_row
from tests.subprocess_python import run_json

CHECK = textwrap.dedent(
    """
    import json, torch
    from app.engine.kernels.low_rank_row import _launch
    torch.manual_seed(0)
    report = {}
    # Falcon-7B's shapes (the stacked qkv + h4h factor, dense's, 4h->h's), a width that is
    # not a multiple of the block, and fp32.
    for rank, width, dtype in ((128, 4544, torch.bfloat16), (64, 18176, torch.bfloat16),
                               (8, 300, torch.float32)):
        x = torch.randn(1, 1, width).to(dtype)
        stacked = (torch.randn(2 * rank, width + 64) / width**0.5).to(dtype)
        a = stacked[rank:, :width]  # rows of a wider layout: A's row stride is not its width
        got = _launch(x, a)
        want = torch.nn.functional.linear(x.float(), a.float())
        rel = ((got.float() - want).norm() / want.norm()).item()
        report[f"{rank}-{width}-{dtype}"] = [rel, list(got.shape), str(got.dtype)]
    print(json.dumps(report))
    """
)


def test_kernel_matches_torch_under_the_interpreter():
    report = run_json(CHECK, interpret=True)
    for key, (rel, shape, dtype) in report.items():
        rank, _, wanted = key.split("-", 2)
        assert shape == [1, 1, int(rank)] and dtype == wanted
        assert rel < (1e-6 if "float32" in key else 1e-2), (key, rel)


def test_torch_serves_off_cuda_and_for_several_rows():
    a = torch.randn(8, 64, dtype=torch.bfloat16)
    for x in (torch.randn(1, 64, dtype=torch.bfloat16), torch.randn(3, 64, dtype=torch.bfloat16)):
        assert torch.equal(low_rank_row(x, a), F.linear(x, a))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the kernel runs on a GPU only")
@pytest.mark.parametrize(("rank", "width"), [(128, 4544), (64, 4544), (64, 18176)])
def test_kernel_on_the_gpu_at_falcon_7b_shapes(rank: int, width: int) -> None:
    """Compiled for the card (the interpreter test checks the logic, this the real launch)."""
    x = torch.randn(1, 1, width, device="cuda").bfloat16()
    a = (torch.randn(rank, width, device="cuda") / width**0.5).bfloat16()
    got = low_rank_row(x, a)
    want = F.linear(x.float(), a.float())
    assert got.shape == (1, 1, rank) and got.dtype == torch.bfloat16
    assert ((got.float() - want).norm() / want.norm()).item() < 1e-2
