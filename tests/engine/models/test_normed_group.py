"""`normed_group`'s rule for folding a block's norm into its group's low-rank launch: which
steps would launch `h A.T` on its own (`group_low_rank`), and that a t handed in as `low`
gives exactly what `project_group` computes itself, on a joined group (Llama's q/k/v and
gate/up, through `_group_update`) and on fused linears left apart (Falcon's shared input,
through `shared_low`). The folded kernel itself runs on a GPU only
(tests/engine/kernels/test_norm_low_rank*.py); on CPU `normed_group` is the norm, then
`project_group`, whatever the switch says.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.engine.kernels import norm_low_rank
from app.engine.kernels import silu_mul as activation
from app.engine.kernels.low_rank_row import low_rank_row
from app.engine.kernels.norm_low_rank import RowNorm
from app.engine.models.llama import GATE_UP, QKV, LlamaBatch
from app.engine.models.projections import Projections
from tests.engine.batch_reference import decode_both_ways
from tests.engine.models.test_fused_epilogue import fused_batch, reference_fused
from tests.engine.models.test_joined_projections import TorchJoin
from tests.engine.models.test_llama_batch import adapted

SHARED_INPUT = ("query_key_value", "dense_h_to_4h")


def assert_low_is_what_the_group_computes(
    projections: Projections, names: tuple[str, ...], slot: int, width: int, gelu_last: bool
) -> None:
    torch.manual_seed(0)
    h = torch.randn(1, 1, width)
    stacked = projections.group_low_rank(h, 0, names, None, slot)
    assert stacked is not None
    assert torch.equal(stacked, projections.lora.shared_a(0, names, slot))
    expected = projections.project_group(h, 0, names, None, slot, gelu_last=gelu_last)
    given = projections.project_group(
        h, 0, names, None, slot, gelu_last=gelu_last, low=low_rank_row(h, stacked)
    )
    assert all(torch.equal(g, e) for g, e in zip(given, expected, strict=True))
    rows = torch.randn(2, 1, width)
    mask = projections.lora.row_mask(["growth", "growth"], 2).unsqueeze(1)
    assert projections.group_low_rank(rows, 0, names, None, slot) is None  # several rows
    assert projections.group_low_rank(h, 0, names, ["growth"], None) is None  # PEFT's way
    assert projections.group_low_rank(rows, 0, names, None, mask) is None  # a row mask
    assert projections.group_low_rank(h, 0, names, None, None) is None  # the bare model


def test_a_joined_llama_group_takes_t_from_the_caller(
    tiny_model_dir, tmp_path_factory: pytest.TempPathFactory
) -> None:  # noqa: ANN001
    model = adapted(tiny_model_dir("llama"), tmp_path_factory.mktemp("normed-llama"))
    joined = LlamaBatch(model, slots=2, max_tokens=16, linear_override=TorchJoin())
    width = joined.embed.shape[1]
    for adapter in ("growth", "income"):  # every projection / q and v only (zero padding)
        slot = joined.lora.names.index(adapter)
        for names in (QKV, GATE_UP):
            assert_low_is_what_the_group_computes(joined.projections, names, slot, width, False)
    plain = LlamaBatch(model, slots=2, max_tokens=16)  # no epilogue: t is never launched alone
    assert plain.projections.group_low_rank(torch.randn(1, 1, width), 0, QKV, None, 0) is None


def test_fused_falcon_linears_take_t_from_the_caller(
    tiny_falcon_dir: Path, packages: dict[str, Path]
) -> None:
    batch = fused_batch(tiny_falcon_dir, packages, [])
    width = batch.embed.shape[1]
    for adapter in ("growth", "income"):
        slot = batch.lora.names.index(adapter)
        assert_low_is_what_the_group_computes(batch.projections, SHARED_INPUT, slot, width, True)


def test_normed_group_off_cuda_is_the_norm_then_the_group(
    tiny_falcon_dir: Path, packages: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(norm_low_rank, "ENABLED", True)
    batch = fused_batch(tiny_falcon_dir, packages, [])
    width = batch.embed.shape[1]
    torch.manual_seed(1)
    x = torch.randn(1, 1, width)
    norm = RowNorm.layer(torch.randn(width), torch.randn(width), 1e-5)
    bound = batch.projections.bind(None, batch.lora.names.index("growth"))
    got = bound.normed_group(x, norm, 0, SHARED_INPUT, gelu_last=True)
    want = bound.project_group(norm(x), 0, SHARED_INPUT, gelu_last=True)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


class FusedJoin(TorchJoin):
    """`TorchJoin`'s joined groups, and a torch `fused` epilogue (residual too) on the
    projections left apart (Llama's o_proj and down_proj), as the mma routing gives them."""

    def __init__(self) -> None:
        super().__init__()
        self.singles = reference_fused([], [])

    def __call__(self, module: torch.nn.Module):  # noqa: ANN204
        return self.singles(module)


def test_down_projections_t_from_the_activation_launch_changes_nothing(
    tiny_model_dir, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:  # noqa: ANN001
    """`low_rank_a`: where `project` would launch `h A.T` on its own, the A that Llama's block
    hands to `silu_mul_low_rank` (one launch on a card, the pair here); the logits are the
    same either way."""
    model = adapted(tiny_model_dir("llama"), tmp_path_factory.mktemp("fold-down"))
    batch = LlamaBatch(model, slots=2, max_tokens=16, linear_override=FusedJoin())
    slot = batch.lora.names.index("growth")
    proj = batch.projections
    width = batch.lora.slot_factors(0, "down_proj", slot)[0].shape[1]
    h = torch.randn(1, 1, width)
    a = proj.bind(None, slot).low_rank_a(h, 0, "down_proj")
    assert a is not None and torch.equal(a, batch.lora.slot_factors(0, "down_proj", slot)[0])
    assert proj.bind(None, slot).low_rank_a(torch.randn(2, 1, width), 0, "down_proj") is None
    assert proj.bind(["growth"], None).low_rank_a(h, 0, "down_proj") is None  # PEFT's way
    assert proj.bind(None, None).low_rank_a(h, 0, "down_proj") is None  # the bare model
    logits = []
    for fold in (False, True):
        monkeypatch.setattr(activation, "FOLD", fold)
        logits.append(decode_both_ways(batch, ["growth"], lora_slot=slot)[1])
    assert torch.equal(logits[0], logits[1])
