"""Llama's q/k/v and gate/up, and Falcon's q/k/v beside its MLP up projection, as joined
launches (`Projections.project_group` over a linear override with `join`, as the `mma` routing
offers on a GPU): logits equal the separate projections' in every way a step adds LoRA, and
one row on one adapter hands every part's update (and Falcon's GELU) to the joined launch's
epilogue.

The tensor-core kernel runs only on a GPU (tests/engine/kernels/test_nf4_mma_gpu.py checks it
there); here the join computes in torch with the kernels' own CPU path (`reference_row`), so
what is checked is the engine's side: the split of the output, which t and which rows of B
each part reads, the bias, and the fallbacks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels.nf4_format import reference_row
from app.engine.models.llama import GATE_UP, QKV, LlamaBatch
from app.engine.models.lora_bank import LoraBank
from tests.engine.batch_reference import decode_both_ways, peft_model
from tests.engine.models.test_llama_batch import adapted


class TorchJoin:
    """A linear override that keeps every module's own forward and joins groups in torch."""

    def __init__(self) -> None:
        self.epilogues: list[tuple[int, bool, tuple[int, ...], int | None]] = []

    def __call__(self, module: torch.nn.Module) -> None:
        return None

    def join(self, modules: list[torch.nn.Module]):  # noqa: ANN201
        weight = torch.cat([m.weight for m in modules])
        biases = [m.bias for m in modules]
        bias = None if biases[0] is None else torch.cat(biases)

        def forward(x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, weight, bias)

        def fused(x: torch.Tensor, lora, splits: tuple[int, ...], gelu_from: int | None):  # noqa: ANN001, ANN202
            self.epilogues.append((weight.shape[0], lora is not None, splits, gelu_from))
            gelu = gelu_from is not None
            return reference_row(x, weight, lora, gelu, splits, gelu_from or 0)

        forward.sizes = [m.out_features for m in modules]
        if bias is None:
            forward.fused = fused
        return forward


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request: pytest.FixtureRequest, tiny_model_dir, tmp_path_factory):  # noqa: ANN001, ANN201
    return adapted(tiny_model_dir(request.param), tmp_path_factory.mktemp(request.param))


def test_joined_groups_give_the_separate_projections_logits(model) -> None:  # noqa: ANN001
    plain = LlamaBatch(model, slots=4, max_tokens=64)
    join = TorchJoin()
    joined = LlamaBatch(model, slots=4, max_tokens=64, linear_override=join)
    assert all(set(layer) == {QKV, GATE_UP} for layer in joined.projections.joined)
    adapters = ["income", None, "growth", "growth"]
    expected, _ = decode_both_ways(plain, adapters)
    eager, masked = decode_both_ways(joined, adapters, lora_mask=joined.lora.row_mask(adapters, 4))
    assert torch.allclose(eager, expected, atol=1e-4, rtol=1e-4)
    assert torch.allclose(masked, expected, atol=1e-4, rtol=1e-4)
    assert join.epilogues == []  # several rows: the parts add their updates after the launch


def test_one_row_hands_each_part_its_own_update(model) -> None:  # noqa: ANN001
    plain = LlamaBatch(model, slots=2, max_tokens=64)
    join = TorchJoin()
    joined = LlamaBatch(model, slots=2, max_tokens=64, linear_override=join)
    attention = model.base_model.model.model.layers[0].self_attn
    q, k, v = (getattr(attention, n).base_layer for n in QKV)
    bias = q.bias is not None
    gate_up = [(2 * model.config.intermediate_size, True, (model.config.intermediate_size,), None)]
    qkv = [(q.out_features + k.out_features + v.out_features, True,
            (q.out_features, q.out_features + k.out_features), None)]  # fmt: skip
    expected_calls = ([] if bias else qkv) + gate_up
    for adapter in ("growth", "income"):  # every projection r=4 / q and v only, r=8
        join.epilogues.clear()
        slot = joined.lora.names.index(adapter)
        expected, _ = decode_both_ways(plain, [adapter])
        _, fused = decode_both_ways(joined, [adapter], lora_slot=slot)
        assert torch.allclose(fused, expected, atol=1e-4, rtol=1e-4), adapter
        assert join.epilogues == expected_calls * joined.n_layers, adapter


def test_joined_b_is_one_tensor_the_parts_view() -> None:
    torch.manual_seed(0)
    a = {name: torch.randn(4, 32) for name in ("q", "k", "v")}
    b = {"q": torch.randn(32, 4), "k": torch.randn(16, 4), "v": torch.randn(16, 4)}
    bank = LoraBank(torch.float32, torch.device("cpu"))
    bank.join((("q", "k", "v"),))
    bank.replace({
        "all": [{n: (a[n], b[n], 2.0) for n in ("q", "k", "v")}],
        "q_only": [{"q": (a["q"][:2], b["q"][:, :2], 0.5)}],
    })  # fmt: skip
    for slot in (0, 1):
        joined = bank.group_b(0, ("q", "k", "v"), slot)
        parts = [bank.slot_factors(0, n, slot) for n in ("q", "k", "v")]
        assert torch.equal(joined, torch.cat([p[1] for p in parts]))
    stacked_q = bank.slot_factors(0, "q", 0)[1]
    assert stacked_q.untyped_storage().data_ptr() == joined.untyped_storage().data_ptr()

    lone = LoraBank(torch.float32, torch.device("cpu"))
    lone.join((("q", "k", "v"),))
    lone.replace({"q_only": [{"q": (a["q"], b["q"], 1.0)}]})
    assert lone.group_b(0, ("q", "k", "v"), 0) is None  # k and v untouched: no joined layout
    assert torch.equal(lone.slot_factors(0, "q", 0)[1], b["q"])


def test_no_join_keeps_each_projection_on_its_own(model) -> None:  # noqa: ANN001
    batch = LlamaBatch(model, slots=1, max_tokens=16)
    assert batch.projections.joined == [{}] * batch.n_layers
    assert batch.lora.groups == ()


def test_falcon_joins_its_qkv_and_mlp_up_projection_gelu_on_the_second(
    tiny_falcon_dir: Path, packages: dict[str, Path]
) -> None:
    from app.engine.models.falcon import SHARED_INPUT, FalconBatch

    model, _ = peft_model(tiny_falcon_dir, packages, device="cpu")
    plain = FalconBatch(model, slots=4, max_tokens=64)
    join = TorchJoin()
    joined = FalconBatch(model, slots=4, max_tokens=64, linear_override=join)
    assert all(set(layer) == {SHARED_INPUT} for layer in joined.projections.joined)
    adapters = ["income", None, "growth", "growth"]
    expected, _ = decode_both_ways(plain, adapters)
    eager, masked = decode_both_ways(joined, adapters, lora_mask=joined.lora.row_mask(adapters, 4))
    assert torch.allclose(eager, expected, atol=1e-4, rtol=1e-4)
    assert torch.allclose(masked, expected, atol=1e-4, rtol=1e-4)
    attention = model.base_model.model.transformer.h[0]
    qkv = attention.self_attention.query_key_value.base_layer.out_features
    up = attention.mlp.dense_h_to_4h.base_layer.out_features
    for adapter in ("growth", "income"):
        join.epilogues.clear()
        slot = joined.lora.names.index(adapter)
        expected, _ = decode_both_ways(plain, [adapter])
        _, fused = decode_both_ways(joined, [adapter], lora_slot=slot)
        assert torch.allclose(fused, expected, atol=1e-4, rtol=1e-4), adapter
        assert join.epilogues == [(qkv + up, True, (qkv,), qkv)] * joined.n_layers
