"""The lean CPU forward with int4 weights (`llama_cpu_int4`): on a tiny Llama whose weights are
made 4-bit (as a Q4_1 file stores them), the same greedy tokens as the float32 lean path, with
adapters too; `TELLER_CPU_INT4` picks it only where nothing is lost, or when told to."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from app.cli_common import CliError, load_settings
from app.contract import ChatMessage, PromptFormat
from app.engine.capabilities import cpu_int4_kernel_fast
from app.engine.factory import build_engine, cpu_lean_dtype
from app.engine.kernels.cpu_int4 import GROUP, fit_grid
from app.engine.kernels.cpu_int4_batch import Int4Projections
from app.engine.loader import LoadedModel, ModelLoadError, load_base_model
from app.engine.models.families import batched_forward
from app.engine.models.llama import LlamaBlocks
from app.engine.models.llama_cpu import INT4, PROJECTIONS, FastLlama, owner, plain_weight
from app.engine.models.llama_cpu_int4 import Head, four_bit_share, round_projections
from app.engine.schedulers.batch import BatchEngine
from app.engine.schedulers.sequential import SequentialEngine
from app.engine.types import FinishEvent, GenerationRequest, SamplingParams
from tests.adapters.packages import make_package

PROMPT = list(range(5, 45))
QUESTION = [ChatMessage("user", "What drives a bond's price when rates rise?")]
TOKENS = 24


@torch.no_grad()
def make_4bit(loaded: LoadedModel, skip: tuple[int, str] | None = None) -> LoadedModel:
    """Every projection weight (but `skip`'s) turned into one a 4-bit file would hold, with
    scale and zero that bf16 stores exactly, so the int4 kernel reproduces it bit for bit."""
    for index, layer in enumerate(loaded.model.model.layers):
        for name in PROJECTIONS:
            if (index, name) == skip:
                continue
            weight = plain_weight(owner(layer, name))
            out, inp = weight.shape
            grid = fit_grid(weight)
            scale = grid.scale.to(torch.bfloat16).float()[..., None]
            zero = (grid.low + 8 * grid.scale).to(torch.bfloat16).float()[..., None]
            levels = grid.q.reshape(out, inp // GROUP, GROUP).float()
            weight.copy_(((levels - 8) * scale + zero).reshape(out, inp))
    return loaded


def choices(
    reference: FastLlama, other: FastLlama, adapter: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both forwards' logits at every step of the reference's greedy answer (teacher forced:
    one early near-tie cannot send the rest down another path). Returns (steps, V) twice."""
    reference.start(len(PROMPT) + TOKENS + 1)
    other.start(len(PROMPT) + TOKENS + 1)
    ours, theirs = [reference.forward(PROMPT, adapter)], [other.forward(PROMPT, adapter)]
    for _ in range(TOKENS):
        token = int(ours[-1].argmax())
        ours.append(reference.forward([token], adapter))
        theirs.append(other.forward([token], adapter))
    return torch.stack(ours), torch.stack(theirs)


def error(reference: torch.Tensor, other: torch.Tensor, top: int = 32) -> torch.Tensor:
    """Each step's largest difference among the reference's `top` logits (the head recomputes
    its best candidates exactly; `test_the_head_recomputes_its_best_candidates` covers the
    rest), as a share of the reference logits' range."""
    best = reference.topk(top, -1).indices
    change = (other.gather(-1, best) - reference.gather(-1, best)).abs().amax(-1)
    return change / (reference.amax(-1) - reference.amin(-1))


def assert_same_greedy_tokens(
    reference: torch.Tensor, other: torch.Tensor, tolerance: float = 0.01
) -> None:
    """Logits within `tolerance` of their range at every step (1%: bf16 activations at the
    matmuls), and the same greedy token at nine steps in ten or more (a random tiny model has
    near-ties, where any rounding may pick the other token)."""
    assert (error(reference, other) <= tolerance).all()
    assert (other.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9


def answer(engine: SequentialEngine, adapter: str | None) -> str:
    request = GenerationRequest(
        messages=QUESTION,
        adapter=adapter,
        sampling=SamplingParams(temperature=0, max_new_tokens=TOKENS),
    )

    async def run() -> str:
        async for event in engine.generate(request):
            if isinstance(event, FinishEvent):
                return event.text
        raise AssertionError("no finish event")

    return asyncio.run(run())


def test_int4_gives_the_float32_paths_greedy_tokens(tiny_llama_dir: Path) -> None:
    model = make_4bit(load_base_model(str(tiny_llama_dir), device="cpu")).model
    int4 = FastLlama(model, 128, INT4)
    assert int4._int4 is not None and int4._int4.int4_share == 1.0
    assert_same_greedy_tokens(*choices(FastLlama(model, 128), int4))


def test_the_head_recomputes_its_best_candidates() -> None:
    """Every logit from the int4 copy, the best ones from the float rows: greedy picks as
    float32 would, the rest within int4's error. (Only the clear leaders are checked exact: near
    the 16th, a non-candidate's int4 logit may outrank a recomputed one.)"""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4096, 64, generator=generator)
    h = torch.randn(64, generator=generator)
    exact = weight @ h
    logits = Head(weight, "int4", candidates=16)(h)
    best = logits.topk(8).indices
    assert torch.allclose(logits[best], exact[best], atol=1e-5)
    assert int(logits.argmax()) == int(exact.argmax())
    assert (logits - exact).abs().amax() <= 0.1 * (exact.amax() - exact.amin())


def test_a_projection_that_is_not_4bit_runs_in_bf16(tiny_llama_dir: Path) -> None:
    """A mixed-precision file: the fused group holding the odd weight falls back to bf16."""
    model = make_4bit(load_base_model(str(tiny_llama_dir), device="cpu"), skip=(1, "up_proj")).model
    int4 = FastLlama(model, 128, INT4)
    assert int4._int4 is not None and 0.5 < int4._int4.int4_share < 1.0
    assert_same_greedy_tokens(*choices(FastLlama(model, 128), int4))


def test_adapters_run_unmerged_on_int4_as_the_merged_float32_path(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    every = make_package(
        tiny_llama_dir, tmp_path / "growth", seed=1, targets=PROJECTIONS, scale=1.0
    )
    some = make_package(
        tiny_llama_dir, tmp_path / "income", seed=2, targets=("k_proj", "up_proj"), scale=1.0
    )
    base = make_4bit(load_base_model(str(tiny_llama_dir), device="cpu")).model
    model = PeftModel.from_pretrained(base, str(every), adapter_name="growth")
    model.load_adapter(str(some), adapter_name="income")
    merged, int4 = FastLlama(model, 128), FastLlama(model, 128, INT4)
    bf16 = FastLlama(model, 128, torch.bfloat16)  # today's default: merged into bf16 weights
    plain = choices(merged, int4)[0]
    for name in ("growth", "income"):
        merged.merge(name)  # the float32 path folds the adapter into a weight copy
        bf16.merge(name)
        reference, other = choices(merged, int4, name)
        assert not reference.equal(plain), "the adapter should change the logits"
        # An adapter moves activations, and bf16's rounding with them: the int4 path must
        # stay at least as close to float32 as the merged bf16 path (today's default) is.
        allowed = error(*choices(merged, bf16, name)).amax().item()
        assert_same_greedy_tokens(reference, other, tolerance=max(allowed, 0.01))


def test_an_int4_engine_serves_adapters_and_unloads_them(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    package = make_package(tiny_llama_dir, tmp_path / "growth", seed=3, targets=PROJECTIONS)
    loaded = make_4bit(load_base_model(str(tiny_llama_dir), device="cpu"))
    engine = SequentialEngine(loaded, fast_dtype=INT4)
    before = answer(engine, None)
    asyncio.run(engine.load_adapter("growth", package, PromptFormat.CHAT_TEMPLATE))
    adapted = answer(engine, "growth")
    assert adapted != before and answer(engine, "growth") == adapted
    asyncio.run(engine.unload_adapter("growth"))
    assert answer(engine, None) == before
    asyncio.run(engine.close())


def test_auto_takes_int4_only_for_a_4bit_model(
    tiny_llama_dir: Path, default_model_dir: Path
) -> None:
    fast = cpu_int4_kernel_fast()
    plain = load_base_model(str(tiny_llama_dir), device="cpu")
    assert four_bit_share(plain.model) == 0.0
    assert cpu_lean_dtype(plain, "auto", "auto") is None  # its old dtype: float32
    four_bit = make_4bit(load_base_model(str(tiny_llama_dir), device="cpu"))
    assert four_bit_share(four_bit.model) == 1.0
    assert cpu_lean_dtype(four_bit, "auto", "auto") == (INT4 if fast else None)
    assert cpu_lean_dtype(four_bit, "float32", "auto") is None  # float32 asked for: exact
    assert cpu_lean_dtype(four_bit, "auto", "off") is None
    default = load_base_model(str(default_model_dir), device="cpu")  # from a Q4_1 GGUF
    assert cpu_lean_dtype(default, "auto", "auto") == (INT4 if fast else torch.bfloat16)


def test_always_rounds_a_float_model_to_4bit(tiny_llama_dir: Path) -> None:
    loaded = load_base_model(str(tiny_llama_dir), device="cpu")
    before = plain_weight(loaded.model.model.layers[0].mlp.down_proj).clone()
    assert cpu_lean_dtype(loaded, "auto", "always") == INT4
    after = plain_weight(loaded.model.model.layers[0].mlp.down_proj)
    assert four_bit_share(loaded.model) == 1.0 and not after.equal(before)
    step = fit_grid(before).scale.amax()
    assert (after - before).abs().amax() <= step / 2 + 1e-6


def test_always_refuses_what_the_lean_path_cannot_run(tiny_falcon_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="TELLER_CPU_INT4=always cannot run this model"):
        cpu_lean_dtype(load_base_model(str(tiny_falcon_dir), device="cpu"), "auto", "always")


def test_the_batch_scheduler_on_cpu_runs_int4_projections(
    tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TELLER_SCHEDULER=batch with int4: every projection of the batched forward runs torch's
    int4 kernel on the 4-bit grid, its logits those of the same 4-bit model in float, and
    several answers come back at once."""
    monkeypatch.setenv("TELLER_BASE_MODEL", str(tiny_llama_dir))
    monkeypatch.setenv("TELLER_DEVICE", "cpu")
    monkeypatch.setenv("TELLER_SCHEDULER", "batch")
    monkeypatch.setenv("TELLER_CPU_INT4", "always")
    engine = build_engine(load_settings())
    try:
        assert isinstance(engine, BatchEngine)
        projections = engine._linear_override
        assert isinstance(projections, Int4Projections) and projections.share == 1.0
        answers = asyncio.run(answer_together(engine, 3))
        assert len(answers) == 3 and all(answers)
    finally:
        asyncio.run(engine.close())

    rounded = load_base_model(str(tiny_llama_dir), device="cpu")
    round_projections(rounded.model)  # the same 4-bit model, run in float32
    layers = LlamaBlocks(rounded.model).modules()
    int4 = Int4Projections(
        [m for layer in layers for m in layer.values()],
        exact_only=True,
        head=rounded.model.lm_head,
    )
    assert int4.share == 1.0  # rounded weights sit on their grid
    assert int4(rounded.model.lm_head) is not None  # the head too, as the lean path runs it
    plain = batched_forward(rounded.model, slots=2, max_tokens=32)
    packed = batched_forward(rounded.model, slots=2, max_tokens=32, linear_override=int4)
    tokens, positions = torch.tensor([5, 9]), torch.tensor([0, 0])
    with torch.no_grad():
        want = plain.decode(tokens, positions, 1)
        got = packed.decode(tokens, positions, 1)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    # The best logits are recomputed from the float rows: they differ only by the kernel's
    # bf16 activations; the rest come from the head's int4 copy.
    top = want.topk(16, dim=-1).indices
    best_got, best_want = got.gather(1, top), want.gather(1, top)
    assert ((best_got - best_want).norm() / best_want.norm()).item() < 2e-2
    assert ((got - want).norm() / want.norm()).item() < 0.2


def test_the_heads_rows_are_its_one_row_logits(tiny_llama_dir: Path) -> None:
    """`Head.rows` (the batch scheduler's) gives each row what `Head` gives it alone: the
    int4 logits, with the best candidates recomputed from the float rows."""
    model = load_base_model(str(tiny_llama_dir), device="cpu").model
    head = Head(model.lm_head.weight, "int4")
    h = torch.randn(3, model.lm_head.in_features, generator=torch.Generator().manual_seed(4))
    together = head.rows(h)
    for row in range(3):
        torch.testing.assert_close(together[row], head(h[row]), rtol=1e-5, atol=1e-5)


async def answer_together(engine: BatchEngine, count: int) -> list[str]:
    async def one(index: int) -> str:
        request = GenerationRequest(
            messages=[ChatMessage(role="user", content=f"Question {index}?")],
            sampling=SamplingParams(max_new_tokens=6, temperature=0.0),
        )
        async for event in engine.generate(request):
            if isinstance(event, FinishEvent):
                return event.text
        raise AssertionError("no finish event")

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def test_a_bad_value_names_the_setting_and_its_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELLER_CPU_INT4", "yes")
    with pytest.raises(CliError, match="cpu_int4") as refused:
        load_settings()
    assert "'auto', 'always' or 'off'" in str(refused.value)
