"""The folded norm + low-rank launch on a GPU: at Llama-3.1-8B's and Falcon-7B's shapes h is
bit-equal to the unfused norm kernels' and t within fp32 summation order of
`low_rank_row(h, A)`; and one-stream decode of a tiny Llama and a tiny Falcon with an adapter
(linears with the one-row epilogue, computed in torch: `TorchJoin`, `reference_fused`) gives
the same greedy tokens and logits with the fold on as off, the fold launching once per norm.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA kernels"),
]

from app.engine.kernels import norm_low_rank as module  # noqa: E402
from app.engine.kernels.low_rank_row import low_rank_row  # noqa: E402
from app.engine.kernels.row_norm import layer_norm_row, rms_norm_rows  # noqa: E402
from app.engine.models.llama import PROJECTIONS as LLAMA_PROJECTIONS  # noqa: E402
from tests.adapters.packages import make_package  # noqa: E402
from tests.engine.batch_reference import peft_model  # noqa: E402
from tests.engine.models.test_fused_epilogue import reference_fused  # noqa: E402
from tests.engine.models.test_joined_projections import TorchJoin  # noqa: E402

EXACT = {"device": "cuda", "quantization": "none", "dtype": "float32"}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


@pytest.mark.parametrize("rank", [192, 128])
def test_rms_fold_at_llama_8b_width(rank: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "ENABLED", True)
    torch.manual_seed(0)
    x = (torch.randn(1, 1, 4096, device="cuda") * 3 + 1).bfloat16()
    w = torch.randn(4096, device="cuda").bfloat16()
    a = (torch.randn(rank, 4096, device="cuda") / 64).bfloat16()
    assert module.fold_runs(x, a)
    h, t = module.rms_norm_low_rank(x, w, 1e-5, a)
    want = rms_norm_rows(x, w, 1e-5)
    assert torch.equal(h, want)
    assert t.shape == (1, 1, rank) and t.dtype == torch.bfloat16
    assert rel_err(t, low_rank_row(want, a)) < 1e-2


@pytest.mark.parametrize("strided", [False, True])
def test_layer_norm_fold_at_falcon_7b_width(strided: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(module, "ENABLED", True)
    torch.manual_seed(0)
    x = (torch.randn(1, 1, 4544, device="cuda") * 3 + 1).bfloat16()
    w, b = torch.randn(4544, device="cuda").bfloat16(), torch.randn(4544, device="cuda").bfloat16()
    wider = (torch.randn(256, 4544 + 64 * strided, device="cuda") / 67).bfloat16()
    a = wider[128:, :4544]  # R = 128; rows of a wider layout when strided
    assert module.fold_runs(x, a)
    h, t = module.layer_norm_low_rank(x, w, b, 1e-5, a)
    want = layer_norm_row(x, w, b, 1e-5)
    assert torch.equal(h, want)
    assert t.shape == (1, 1, 128) and t.dtype == torch.bfloat16
    assert rel_err(t, low_rank_row(want, a)) < 1e-2


def folded_launches(run: Callable[[], list[torch.Tensor]]) -> tuple[list[torch.Tensor], int]:
    """`run()`'s result and how many `_norm_low_rank` kernels it launched."""
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        out = run()
        torch.cuda.synchronize()
    return out, sum(1 for e in prof.events() if "_norm_low_rank" in e.name)


def greedy(batch, adapter: str, steps: int) -> list[torch.Tensor]:  # noqa: ANN001
    """Logits of a prompt and `steps` one-row decode steps on `adapter`'s slot, each step
    fed the previous logits' argmax."""
    prompt = [5, 17, 99, 3, 42, 7]
    logits = [batch.prefill(0, prompt, adapter)]
    slot = batch.lora.names.index(adapter)
    for position in range(len(prompt), len(prompt) + steps):
        token = logits[-1].argmax().view(1)
        at = torch.tensor([position], device="cuda")
        logits.append(batch.decode(token, at, position + 1, lora_slot=slot)[0])
    return logits


def decode_with_and_without_fold(batch, norms_per_layer: int, steps: int = 6) -> None:  # noqa: ANN001
    for adapter in ("growth", "income"):
        try:
            module.ENABLED = False
            plain, none = folded_launches(lambda: greedy(batch, adapter, steps))  # noqa: B023
            module.ENABLED = True
            folded, launches = folded_launches(lambda: greedy(batch, adapter, steps))  # noqa: B023
        finally:
            module.ENABLED = False
        assert none == 0
        assert launches == norms_per_layer * batch.n_layers * steps, adapter
        assert [int(x.argmax()) for x in folded] == [int(x.argmax()) for x in plain], adapter
        for got, want in zip(folded, plain, strict=True):
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), adapter


@pytest.fixture(scope="module")
def llama(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    base = tiny_model_dir("llama")
    root = tmp_path_factory.mktemp("fold-llama")
    packages = {
        "growth": make_package(base, root / "growth", seed=1, targets=LLAMA_PROJECTIONS),
        "income": make_package(base, root / "income", seed=2, rank=8, targets=("q_proj", "v_proj")),
    }
    return peft_model(base, packages, **EXACT)[0]


def test_llama_decodes_the_same_with_its_norms_folded(llama) -> None:  # noqa: ANN001
    from app.engine.models.llama import LlamaBatch

    batch = LlamaBatch(llama, slots=1, max_tokens=32, linear_override=TorchJoin())
    decode_with_and_without_fold(batch, norms_per_layer=2)  # q/k/v, then gate/up


@pytest.mark.parametrize("joined", [True, False])
def test_falcon_decodes_the_same_with_its_norm_folded(
    joined: bool, tiny_falcon_dir: Path, packages: dict[str, Path]
) -> None:
    from app.engine.models.falcon import FalconBatch

    model, _ = peft_model(tiny_falcon_dir, packages, **EXACT)
    override = TorchJoin() if joined else reference_fused([])
    batch = FalconBatch(model, slots=1, max_tokens=32, linear_override=override)
    decode_with_and_without_fold(batch, norms_per_layer=1)  # the shared input's layer norm
