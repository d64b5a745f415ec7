"""The masked LoRA expand kernel (`add_lora_expand`) gives the fp32 math rounded once: under
Triton's CPU interpreter for 2-3 part groups and 1-33 rows (a row on no adapter keeps its
base output bit for bit), its torch reference against the matmul + mask + addmm it replaces,
its shape errors, and the bank's stacked A of a group (`LoraBank.group_a`) it reads.

tests/engine/kernels/test_lora_expand_gpu.py runs the compiled kernel at Llama-3.1-8B sizes.
"""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from app.engine.kernels.lora_expand import add_lora_expand
from app.engine.models.lora_bank import LoraBank
from tests.subprocess_python import run_json

CHECK = textwrap.dedent(
    """
    import json, torch
    from app.engine.kernels.lora_expand import _launch
    torch.manual_seed(0)
    S, R = 3, 8
    report = []
    # q/k/v-like and gate/up-like boundaries (multiples of the 64-column block); the second
    # group's B is a column range of a wider tensor (row stride != S*R) and its sum goes to
    # a fresh output (`base` given).
    for sizes, strided in (((256, 128, 128), False), ((192, 320), True)):
        starts = tuple(sum(sizes[:i]) for i in range(len(sizes)))
        width, parts = sum(sizes), len(sizes)
        for rows in (1, 5, 33):
            low = torch.randn(rows, parts * S * R).bfloat16()
            mask = torch.zeros(rows, S * R, dtype=torch.bfloat16)
            for row in range(rows):  # row -> slot row % 4; slot 3: on no adapter
                slot = row % (S + 1)
                if slot < S:
                    mask[row, slot * R : (slot + 1) * R] = 1
            wide = (torch.randn(width, 2 * S * R) * 0.2).bfloat16()
            b = wide[:, S * R :] if strided else wide[:, : S * R].contiguous()
            base = torch.randn(rows, width).bfloat16()
            out = torch.empty_like(base) if strided else base.clone()
            _launch(out, low, mask, b, starts, base if strided else out)
            want = base.float().clone()
            for p, (start, end) in enumerate(zip(starts, (*starts[1:], width))):
                masked = low[:, p * S * R : (p + 1) * S * R].float() * mask.float()
                want[:, start:end] += masked @ b[start:end].float().T
            bare = [row for row in range(rows) if row % (S + 1) == S]
            report.append({
                "case": f"{sizes}-{rows}",
                "rel": ((out.float() - want).norm() / want.norm()).item(),
                "ulps": ((out.float() - want).abs() / want.abs().clamp_min(1e-3)).max().item(),
                "bare_kept": bool(torch.equal(out[bare], base[bare])),
                "dtype": str(out.dtype),
            })
    print(json.dumps(report))
    """
)


def test_kernel_gives_the_fp32_math_under_the_interpreter() -> None:
    report = run_json(CHECK, interpret=True)
    assert len(report) == 6
    for case in report:
        assert case["dtype"] == "torch.bfloat16", case
        # One bf16 rounding of the result; the interpreter's fp32 -> bf16 cast truncates,
        # so an entry may sit a whole bf16 step (2**-7 relative) off, not half of one.
        assert case["rel"] < 5e-3, case
        assert case["ulps"] < 2**-6, case
        assert case["bare_kept"], case  # a row on no adapter: its base output bit for bit


def test_reference_is_the_matmul_mask_and_addmm_it_replaces() -> None:
    """Off CUDA the torch reference serves: per part, `base + (low·mask) B.T` in fp32."""
    torch.manual_seed(1)
    rank = 12
    starts = (0, 48, 64)
    low = torch.randn(7, 3 * rank)
    mask = (torch.rand(7, rank) > 0.5).float()
    b = torch.randn(80, rank)
    base = torch.randn(7, 80)
    out = base.clone()
    assert add_lora_expand(out, low, mask, b, starts) is out  # in place
    ends = (48, 64, 80)
    for p, (start, end) in enumerate(zip(starts, ends, strict=True)):
        part_low = low[:, p * rank : (p + 1) * rank] * mask
        want = torch.addmm(base[:, start:end], part_low, b[start:end].t())
        assert torch.allclose(out[:, start:end], want, atol=1e-5), p
    fresh = torch.empty_like(base)
    add_lora_expand(fresh, low, mask, b, starts, base=base)
    assert torch.equal(fresh, out)


@pytest.mark.parametrize(
    ("low_cols", "mask_cols", "b_rows", "starts", "message"),
    [
        (3 * 8, 8, 80, (0, 48, 64), None),
        (2 * 8, 8, 80, (0, 48, 64), "low must be (4, 24)"),
        (3 * 8, 8, 64, (0, 48, 64), "b must be (80, 8)"),
        (3 * 8, 6, 80, (0, 48, 64), "low must be (4, 18)"),
        (3 * 8, 8, 80, (16, 48, 64), "starts must be 0 then strictly increasing"),
        (3 * 8, 8, 80, (0, 64, 48), "starts must be 0 then strictly increasing"),
        (3 * 8, 8, 80, (0, 48, 80), "must lie below out's width 80"),
    ],
)
def test_shapes_that_do_not_fit_say_which_tensor_to_fix(
    low_cols: int, mask_cols: int, b_rows: int, starts: tuple[int, ...], message: str | None
) -> None:
    out = torch.zeros(4, 80)
    args = (torch.zeros(4, low_cols), torch.zeros(4, mask_cols), torch.zeros(b_rows, mask_cols))
    if message is None:
        add_lora_expand(out, *args, starts)
        return
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        add_lora_expand(out, *args, starts)


def test_three_d_tensors_are_refused() -> None:
    with pytest.raises(ValueError, match="takes 2-D out"):
        add_lora_expand(
            torch.zeros(2, 1, 8), torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(8, 4), (0,)
        )


def test_group_a_stacks_every_part_slot_by_slot_once_per_adapter_set() -> None:
    torch.manual_seed(2)
    names = ("q", "k", "v")
    a = {name: torch.randn(4, 32) for name in names}
    b = {"q": torch.randn(32, 4), "k": torch.randn(16, 4), "v": torch.randn(16, 4)}
    bank = LoraBank(torch.float32, torch.device("cpu"))
    bank.join((names,))
    bank.replace({
        "all": [{n: (a[n], b[n], 2.0) for n in names}],
        "narrow": [{n: (a[n][:2], b[n][:, :2], 0.5) for n in names}],  # rank 2, padded to 4
    })  # fmt: skip
    stacked = bank.group_a(0, names)
    assert stacked is not None and stacked.shape == (3 * 2 * 4, 32)  # (P*S*R, in)
    for p, name in enumerate(names):
        for slot in (0, 1):
            rows = stacked[(p * 2 + slot) * 4 : (p * 2 + slot + 1) * 4]
            assert torch.equal(rows, bank.slot_factors(0, name, slot)[0]), (name, slot)
    assert bank.group_a(0, names) is stacked  # made once
    joined_b = bank.group_b(0, names)
    assert joined_b is not None and joined_b.shape == (64, 2 * 4)  # every slot's columns

    # The group's update through the kernel's math equals each part's `add_masked`.
    x = torch.randn(3, 32)
    mask = bank.row_mask(["narrow", None, "all"], 3)
    base = torch.randn(3, 64)
    out = base.clone()
    add_lora_expand(out, F.linear(x, stacked), mask, joined_b, (0, 32, 48))
    for name, (start, end) in zip(names, ((0, 32), (32, 48), (48, 64)), strict=True):
        want = bank.add_masked(base[:, start:end], x, 0, name, mask)
        assert torch.allclose(out[:, start:end], want, atol=1e-5), name

    bank.replace({"q_only": [{"q": (a["q"], b["q"], 1.0)}]})
    assert bank.group_a(0, names) is None  # k and v untouched: each part adds its own
