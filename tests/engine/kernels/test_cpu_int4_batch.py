"""The batch scheduler's int4 projections on CPU (`Int4Projections`) with q/k/v and gate/up
packed as one matmul each (`join`): the batched forward's logits equal those of the same
projections packed one by one, with adapters on some rows, biases (Qwen2) and one row alone;
a member asked for by itself gives its slice of the group's output."""

from __future__ import annotations

import pytest
import torch

from app.engine.kernels.cpu_int4_batch import Int4Projections
from app.engine.models.llama import GATE_UP, QKV, LlamaBatch, LlamaBlocks
from app.engine.models.llama_cpu_int4 import round_projections
from app.engine.models.projections import base_linear
from tests.engine.batch_reference import decode_both_ways
from tests.engine.models.test_llama_batch import adapted


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request: pytest.FixtureRequest, tiny_model_dir, tmp_path_factory):  # noqa: ANN001, ANN201
    model = adapted(tiny_model_dir(request.param), tmp_path_factory.mktemp(request.param))
    round_projections(model)  # on their 4-bit grids, as a model from a Q4_1 file
    return model


def packed(model, *, joined: bool, dense_rows: int | None = None) -> Int4Projections:  # noqa: ANN001
    """The model's projections packed by the factory's rule, groups joined or not."""
    blocks = LlamaBlocks(model)
    layers = blocks.modules()
    modules = [base_linear(m) for layer in layers for m in layer.values()]
    groups = [[base_linear(layer[n]) for n in group] for layer in layers for group in blocks.groups]
    return Int4Projections(
        modules, exact_only=True, groups=groups if joined else (), dense_rows=dense_rows
    )


@pytest.mark.parametrize("adapters", [["growth", None, "income"], [None], ["income"]])
def test_joined_groups_give_the_separate_projections_logits(model, adapters) -> None:  # noqa: ANN001
    separate = LlamaBatch(
        model, slots=3, max_tokens=32, linear_override=packed(model, joined=False)
    )
    joined = LlamaBatch(model, slots=3, max_tokens=32, linear_override=packed(model, joined=True))
    assert all(layer == {} for layer in separate.projections.joined)
    assert all(set(layer) == {QKV, GATE_UP} for layer in joined.projections.joined)
    want, _ = decode_both_ways(separate, adapters)
    got, _ = decode_both_ways(joined, adapters)
    # each output column is the same int4 dot product either way
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_member_alone_is_its_slice_of_the_group(model) -> None:  # noqa: ANN001
    separate, joined = packed(model, joined=False), packed(model, joined=True)
    assert separate.share == joined.share == 1.0
    layer = LlamaBlocks(model).modules()[0]
    members = [base_linear(layer[name]) for name in QKV]
    group = joined.join(members)
    assert group is not None and group.sizes == [m.out_features for m in members]
    assert separate.join(members) is None and joined.join(members[:2]) is None
    x = torch.randn(2, members[0].in_features, generator=torch.Generator().manual_seed(3))
    together = group(x)
    start = 0
    for member in members:
        alone = separate(member)
        part = joined(member)
        assert alone is not None and part is not None
        end = start + member.out_features
        torch.testing.assert_close(part(x), alone(x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(together[:, start:end], alone(x), rtol=1e-6, atol=1e-6)
        start = end


def test_prompts_take_the_modules_own_weights_from_dense_rows(model) -> None:  # noqa: ANN001
    """A prompt of `dense_rows` tokens or more multiplies by the modules' weights (bf16 tiles
    beat the row-by-row int4 kernel there): its logits are the plain forward's; a one-row step
    still runs int4 (bf16 activations: near the plain forward, not equal)."""
    dense = packed(model, joined=True, dense_rows=8)
    plain = LlamaBatch(model, slots=1, max_tokens=32)
    mixed = LlamaBatch(model, slots=1, max_tokens=32, linear_override=dense)
    prompt = list(range(5, 17))  # 12 rows
    torch.testing.assert_close(mixed.prefill(0, prompt, None), plain.prefill(0, prompt, None))
    step = torch.tensor([3]), torch.tensor([len(prompt)]), len(prompt) + 1
    want, got = plain.decode(*step), mixed.decode(*step)
    assert not torch.equal(got, want)
    assert ((got - want).norm() / want.norm()).item() < 2e-2
