"""One decode row through linears with a fused epilogue (the tensor-core GEMV's `fused`): the
LoRA update and GELU are handed to the kernel, and the logits equal the unfused path's.

The kernel itself runs only on a GPU (bench/nf4_mma_gpu.py); here a reference `fused` in torch
stands in for it, so what is checked is the engine's side: which factors, which rows, the
shared low-rank GEMM of the two projections that read the layer norm, GELU's place.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

from tests.engine.batch_reference import decode_both_ways, peft_model


def reference_fused(calls: list, residuals: list | None = None) -> callable:
    """A linear override whose callables carry `fused(x, lora, gelu)`, computed in torch;
    given `residuals`, the epilogue also adds a residual (`fused.residual`) and logs them."""

    def override(module: torch.nn.Module):  # noqa: ANN202
        weight = module.weight

        def forward(x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, weight)

        def fused(x: torch.Tensor, lora, gelu: bool, residual=None) -> torch.Tensor:  # noqa: ANN001
            calls.append((tuple(weight.shape), lora is not None, gelu))
            out = F.linear(x, weight)
            if lora is not None:
                out = out + F.linear(lora[0], lora[1])
            out = F.gelu(out) if gelu else out
            if residual is not None:
                residuals.append(tuple(weight.shape))
                out = out + residual
            return out

        forward.fused = fused
        fused.residual = residuals is not None
        return forward

    return override


def fused_batch(  # noqa: ANN201
    tiny_falcon_dir: Path, packages: dict[str, Path], calls: list, residuals: list | None = None
):
    from app.engine.models.falcon import FalconBatch

    model, _ = peft_model(tiny_falcon_dir, packages, device="cpu")
    override = reference_fused(calls, residuals)
    return FalconBatch(model, slots=2, max_tokens=64, linear_override=override)


def test_one_row_on_one_adapter_goes_through_the_epilogue(
    tiny_falcon_dir: Path,
    packages: dict[str, Path],
) -> None:
    calls: list = []
    batch = fused_batch(tiny_falcon_dir, packages, calls)
    for adapter in ("growth", "income"):  # all four projections / query_key_value only
        calls.clear()
        slot = batch.lora.names.index(adapter)
        eager, fused = decode_both_ways(batch, [adapter], lora_slot=slot)
        assert torch.allclose(fused, eager, atol=1e-4, rtol=1e-4), adapter
        layers = batch.n_layers
        assert len(calls) == 4 * layers  # every projection of the decode step, fused
        assert sum(gelu for _, _, gelu in calls) == layers  # GELU only on the up projection
        # growth adapts all four; income only query_key_value, its other factors are the
        # stacked layout's zero padding (a no-op update through the same fixed shapes)
        assert all(has for _, has, _ in calls)


def test_an_epilogue_that_adds_the_residual_takes_both_of_a_layers_adds(
    tiny_falcon_dir: Path,
    packages: dict[str, Path],
) -> None:
    residuals: list = []
    batch = fused_batch(tiny_falcon_dir, packages, [], residuals)
    slot = batch.lora.names.index("growth")
    eager, fused = decode_both_ways(batch, ["growth"], lora_slot=slot)
    assert torch.allclose(fused, eager, atol=1e-4, rtol=1e-4)
    # dense adds x, dense_4h_to_h adds that: no separate add left in the block
    width = batch.embed.shape[1]
    dense, down = (width, width), (width, 4 * width)
    assert residuals == [dense, down] * batch.n_layers


def test_the_base_model_row_and_several_rows_keep_the_plain_path(
    tiny_falcon_dir: Path,
    packages: dict[str, Path],
) -> None:
    calls: list = []
    batch = fused_batch(tiny_falcon_dir, packages, calls)
    base = batch.decode(torch.tensor([3]), torch.tensor([4]), 5)
    assert len(calls) == 4 * batch.n_layers and not any(has for _, has, _ in calls)
    calls.clear()
    batch.decode(torch.tensor([3, 4]), torch.tensor([4, 5]), 6, lora_slot=0)  # two rows
    assert calls == []
    assert base.shape == (1, batch.embed.shape[0])


def test_shared_low_rank_factors_are_stacked_once_per_adapter_set(
    tiny_falcon_dir: Path,
    packages: dict[str, Path],
) -> None:
    batch = fused_batch(tiny_falcon_dir, packages, [])
    pair = ("query_key_value", "dense_h_to_4h")
    growth, income = batch.lora.names.index("growth"), batch.lora.names.index("income")
    stacked = batch.lora.shared_a(0, pair, growth)
    a_qkv, _ = batch.lora.slot_factors(0, pair[0], growth)
    a_up, _ = batch.lora.slot_factors(0, pair[1], growth)
    assert torch.equal(stacked, torch.cat([a_qkv, a_up]))
    assert batch.lora.shared_a(0, pair, growth) is stacked  # cached
    padded = batch.lora.shared_a(0, pair, income)  # income adapts query_key_value only
    assert padded[batch.lora.rank :].abs().sum() == 0 and padded.abs().sum() > 0
    batch.lora.replace(dict(batch.lora.adapters))
    assert batch.lora.shared_a(0, pair, growth) is not stacked  # rebuilt after a change
