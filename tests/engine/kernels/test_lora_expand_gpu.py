"""The masked LoRA expand kernel compiled for the card: at Llama-3.1-8B's joined shapes
(q/k/v 4096/1024/1024 and gate/up 14336 x 2 over 4096 inputs, four rank-64 adapters) it gives
the fp32 math rounded once, a CUDA graph captures it, and the engine's two callers use it:
`Projections.project_group` for a joined group (GELU on the last part when asked) and
`LoraBank.add_masked` for one projection, which leaves the output it is given as it was.

tests/engine/kernels/test_lora_expand.py checks the same logic under Triton's interpreter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="the kernel runs on a GPU only"),
]

from app.engine.kernels.lora_expand import _kernel_fits, add_lora_expand  # noqa: E402
from app.engine.models.lora_bank import LoraBank  # noqa: E402
from app.engine.models.projections import Projections  # noqa: E402

SLOTS, RANK, IN = 4, 64, 4096
LLAMA_GROUPS = {"qkv": (4096, 1024, 1024), "gate_up": (14336, 14336)}


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).norm() / want.norm()).item()


def step(rows: int, sizes: tuple[int, ...], seed: int = 0):  # noqa: ANN201
    """A decode step's operands: low-rank activations of x over the group's stacked A, a row
    mask with one row on no adapter, the joined B·scale, and the base output."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    width, parts, sr = sum(sizes), len(sizes), SLOTS * RANK
    x = torch.randn(rows, IN, device="cuda", generator=gen).bfloat16()
    a = (torch.randn(parts * sr, IN, device="cuda", generator=gen) / IN**0.5).bfloat16()
    low = F.linear(x, a)  # (M, P*S*R)
    mask = torch.zeros(rows, sr, device="cuda", dtype=torch.bfloat16)
    for row in range(rows - 1):  # the last row on no adapter
        slot = row % SLOTS
        mask[row, slot * RANK : (slot + 1) * RANK] = 1
    b = (torch.randn(width, sr, device="cuda", generator=gen) * 0.05).bfloat16()
    base = torch.randn(rows, width, device="cuda", generator=gen).bfloat16()
    starts = tuple(sum(sizes[:i]) for i in range(parts))
    return low, mask, b, base, starts


def fp32_math(low, mask, b, base, starts) -> torch.Tensor:  # noqa: ANN001
    want = base.float().clone()
    sr = mask.shape[1]
    for p, (start, end) in enumerate(zip(starts, (*starts[1:], base.shape[1]), strict=True)):
        masked = low[:, p * sr : (p + 1) * sr].float() * mask.float()
        want[:, start:end] += masked @ b[start:end].float().T
    return want


@pytest.mark.parametrize("rows", [2, 32, 64])
@pytest.mark.parametrize("group", sorted(LLAMA_GROUPS))
def test_kernel_gives_the_fp32_math_at_llama_8b_shapes(group: str, rows: int) -> None:
    low, mask, b, base, starts = step(rows, LLAMA_GROUPS[group])
    out = base.clone()
    assert _kernel_fits(out, low, mask, b, starts, out)  # the kernel, not the reference
    add_lora_expand(out, low, mask, b, starts)
    want = fp32_math(low, mask, b, base, starts)
    assert rel_err(out, want) < 3e-3, (group, rows)
    assert torch.equal(out[-1], base[-1])  # the row on no adapter keeps its base output
    for p, start in enumerate(starts):  # no part read another part's activations
        end = (*starts[1:], base.shape[1])[p]
        assert rel_err(out[:, start:end], want[:, start:end]) < 3e-3, (group, rows, p)


def test_a_prompt_of_hundreds_of_rows() -> None:
    low, mask, b, base, starts = step(300, LLAMA_GROUPS["qkv"])
    out = base.clone()
    add_lora_expand(out, low, mask, b, starts)
    assert rel_err(out, fp32_math(low, mask, b, base, starts)) < 3e-3


def test_a_cuda_graph_captures_it() -> None:
    """No allocation, no host sync: captured once, replays give the eager result."""
    low, mask, b, base, starts = step(32, LLAMA_GROUPS["qkv"])
    eager = add_lora_expand(base.clone(), low, mask, b, starts)
    out = base.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # compiled outside the capture
        add_lora_expand(out, low, mask, b, starts)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        add_lora_expand(out, low, mask, b, starts)
    for _ in range(2):
        out.copy_(base)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, eager)


class CatJoin:
    """A linear override that joins a group's weights in torch (the `mma` routing's contract
    without its kernels: `join` returns the side-by-side product with `.sizes`)."""

    def __call__(self, module: torch.nn.Module) -> None:
        return None

    def join(self, modules: list[torch.nn.Module]):  # noqa: ANN201
        weight = torch.cat([m.weight for m in modules])

        def forward(x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, weight)

        forward.sizes = [m.out_features for m in modules]
        return forward


def tiny_layer(adapted: dict[str, tuple[str, ...]]):  # noqa: ANN201
    """One layer of q/k/v (256/128/128 over 256 inputs) in bf16 on the card, and adapters
    (rank 8 and a narrower rank 4, zero-padded) on the projections `adapted` names."""
    torch.manual_seed(0)
    sizes = {"q": 256, "k": 128, "v": 128}
    modules = {
        n: torch.nn.Linear(256, out, bias=False, device="cuda", dtype=torch.bfloat16)
        for n, out in sizes.items()
    }
    factors = {}
    for adapter, rank in (("wide", 8), ("narrow", 4)):
        factors[adapter] = [{
            n: (torch.randn(rank, 256) / 16, torch.randn(sizes[n], rank) * 0.1, 2.0)
            for n in adapted[adapter]
        }]  # fmt: skip
    bank = LoraBank(torch.bfloat16, torch.device("cuda"))
    projections = Projections([modules], bank, CatJoin(), groups=(("q", "k", "v"),))
    bank.replace(factors)
    return modules, factors, projections


def peft_math(x, modules, factors, name, adapters) -> torch.Tensor:  # noqa: ANN001
    """Each row's base output plus its own adapter's update, in fp32."""
    out = F.linear(x.float(), modules[name].weight.float())
    for row, adapter in enumerate(adapters):
        if adapter is not None and name in factors[adapter][0]:
            a, b, scale = factors[adapter][0][name]
            low = x[row].float() @ a.cuda().float().T
            out[row] += low @ b.cuda().float().T * scale
    return out


@pytest.mark.parametrize("gelu_last", [False, True])
@pytest.mark.parametrize(
    "adapted",
    [
        {"wide": ("q", "k", "v"), "narrow": ("q", "k", "v")},  # the joined group's path
        {"wide": ("q", "v"), "narrow": ("q",)},  # k untouched: each part on its own
    ],
    ids=["every_part", "k_untouched"],
)
def test_project_group_adds_each_rows_adapter(
    adapted: dict[str, tuple[str, ...]], gelu_last: bool
) -> None:
    modules, factors, projections = tiny_layer(adapted)
    joined_path = projections.lora.group_a(0, ("q", "k", "v")) is not None
    assert joined_path == ("k" in adapted["wide"])
    adapters = ["wide", None, "narrow", "wide", "narrow"]
    x = torch.randn(5, 1, 256, device="cuda").bfloat16()  # (B, 1, in): a decode step
    mask = projections.lora.row_mask(adapters, 5).unsqueeze(1)  # (B, 1, S*R)
    outs = projections.project_group(x, 0, ("q", "k", "v"), None, mask, gelu_last=gelu_last)
    for name, got in zip(("q", "k", "v"), outs, strict=True):
        want = peft_math(x[:, 0], modules, factors, name, adapters)
        if gelu_last and name == "v":
            want = F.gelu(want)
        assert got.shape == (5, 1, want.shape[-1]), name
        assert rel_err(got[:, 0], want) < 1e-2, (name, gelu_last)


def test_add_masked_leaves_the_output_it_is_given() -> None:
    """`add_masked` on one projection returns a fresh sum: the base output may be a view of
    a joined output that other parts still read."""
    modules, factors, projections = tiny_layer({"wide": ("q",), "narrow": ("q",)})
    bank = projections.lora
    adapters = ["narrow", "wide", None]
    x = torch.randn(3, 256, device="cuda").bfloat16()
    joined = torch.randn(3, 512, device="cuda").bfloat16()
    part = joined[:, :256]  # strided rows, as a part of a joined output
    before = joined.clone()
    got = bank.add_masked(part, x, 0, "q", bank.row_mask(adapters, 3))
    assert torch.equal(joined, before)
    base = part.float()
    want = (
        base
        + peft_math(x, modules, factors, "q", adapters)
        - F.linear(x.float(), modules["q"].weight.float())
    )
    assert rel_err(got, want) < 1e-2
    assert torch.equal(got[2], part[2])  # the row on no adapter
