"""The batched Llama-family forward against transformers + PEFT, in float32 on CPU.

Each tiny variant carries one of the family's differences (grouped-query attention with tied
embeddings as SmolLM2, Llama 3.1's RoPE scaling with untied embeddings, Qwen2's q/k/v
biases, Mistral's block): prefill and decode logits must equal PEFT's forward with the
adapter on, and the fixed-shape LoRA layouts CUDA graphs replay must equal the PEFT-ordered
updates.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.engine.loader import load_base_model
from app.engine.models.families import batched_forward, family, unsupported_reason
from app.engine.models.llama import PROJECTIONS, LlamaBatch
from tests.adapters.packages import make_package
from tests.engine.batch_reference import decode_both_ways

VARIANTS = ("llama", "llama3", "qwen2", "mistral")


def adapted(base: Path, root: Path):  # noqa: ANN201
    """The base under PEFT with two adapters: every projection r=4, and q/v only r=8."""
    from peft import PeftModel

    growth = make_package(base, root / "growth", seed=1, targets=PROJECTIONS)
    income = make_package(base, root / "income", seed=2, rank=8, targets=("q_proj", "v_proj"))
    model = load_base_model(str(base), device="cpu").model
    model = PeftModel.from_pretrained(model, str(growth), "growth")
    model.load_adapter(str(income), adapter_name="income")
    return model.eval()


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request: pytest.FixtureRequest, tiny_model_dir, tmp_path_factory) -> tuple:  # noqa: ANN001
    root = tmp_path_factory.mktemp(f"adapters-{request.param}")
    model = adapted(tiny_model_dir(request.param), root)
    return request.param, model


def peft_logits(model, ids: list[int], adapter: str | None) -> torch.Tensor:  # noqa: ANN001
    """PEFT's logits (S, V) for `ids` with `adapter` on (None: all off)."""
    tensor = torch.tensor([ids])
    with torch.inference_mode():
        if adapter is None:
            with model.disable_adapter():
                return model(tensor).logits[0].float()
        model.set_adapter(adapter)
        return model(tensor).logits[0].float()


def test_every_variant_takes_the_batched_path(variant: tuple) -> None:
    name, model = variant
    assert family(model) == "llama"
    assert unsupported_reason(model, 256) is None, name
    assert isinstance(batched_forward(model, slots=1, max_tokens=16), LlamaBatch)


@pytest.mark.parametrize("adapter", ["growth", "income", None])
def test_prefill_then_decode_equal_peft(variant: tuple, adapter: str | None) -> None:
    """Prompt logits, then three decoded tokens' logits, equal PEFT's forward over the
    whole sequence (float32; the same ops in the same order, so within float rounding)."""
    _, model = variant
    batch = LlamaBatch(model, slots=2, max_tokens=64)
    torch.manual_seed(5)
    ids = torch.randint(0, 1000, (9,)).tolist()
    reference = peft_logits(model, ids + [11, 12, 13], adapter)
    got = [batch.prefill(1, ids, adapter)]
    for step, token in enumerate((11, 12, 13)):
        position = torch.tensor([len(ids) + step])
        # slot 1 holds the sequence; slot 0 decodes alongside it on the bare model
        logits = batch.decode(
            torch.tensor([0, token]),
            torch.cat([torch.tensor([0]), position]),
            len(ids) + step + 1,
            adapters=[None, adapter],
        )
        got.append(logits[1])
    expected = reference[len(ids) - 1 :]
    assert torch.allclose(torch.stack(got), expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(torch.stack(got).argmax(-1), expected.argmax(-1))


def test_fixed_shape_lora_layouts_equal_per_adapter_updates(variant: tuple) -> None:
    _, model = variant
    batch = LlamaBatch(model, slots=4, max_tokens=64)
    adapters = ["income", None, "growth", "growth"]
    eager, masked = decode_both_ways(batch, adapters, lora_mask=batch.lora.row_mask(adapters, 4))
    assert torch.allclose(masked, eager, atol=1e-4, rtol=1e-4)
    slot = batch.lora.names.index("growth")
    eager, one = decode_both_ways(batch, ["growth", "growth"], lora_slot=slot)
    assert torch.allclose(one, eager, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("stacked_lora", [False, True], ids=["per-adapter", "stacked"])
def test_batched_prefill_gives_each_prompt_its_own_logits_and_cache(
    variant: tuple, stacked_lora: bool
) -> None:
    _, model = variant
    batch = LlamaBatch(model, slots=6, max_tokens=64)
    torch.manual_seed(3)
    prompts = [torch.randint(0, 1000, (n,)).tolist() for n in (7, 1, 12)]
    adapters = ["growth", None, "income"]
    together = batch.prefill_many([0, 1, 2], prompts, adapters, stacked_lora=stacked_lora)
    for row, (prompt, adapter) in enumerate(zip(prompts, adapters, strict=True)):
        alone = batch.prefill(3 + row, prompt, adapter)
        assert torch.allclose(together[row], alone, atol=1e-4, rtol=1e-4)
        n = len(prompt)
        cached, reference = batch.k_cache[:, row, :, :n], batch.k_cache[:, 3 + row, :, :n]
        assert torch.allclose(cached, reference, atol=1e-4, rtol=1e-4)


def test_a_sliding_window_shorter_than_the_context_keeps_the_sequential_path(
    tiny_model_dir,  # noqa: ANN001
) -> None:
    model = load_base_model(str(tiny_model_dir("mistral")), device="cpu").model
    model.config.sliding_window = 128
    assert unsupported_reason(model, 128) is None
    assert "sliding window" in unsupported_reason(model, 256)
