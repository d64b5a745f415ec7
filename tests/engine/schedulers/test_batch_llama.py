"""The batch scheduler on the tiny Llama-family models: many answers per step over two
adapters, rows leaving early and joining mid-flight, each answer exactly what transformers +
PEFT `generate` gives that request alone (float32, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engine.loader import load_base_model
from app.engine.models.families import unsupported_reason
from app.engine.models.llama import PROJECTIONS
from app.engine.schedulers.batch import BatchEngine
from tests.adapters.packages import make_package
from tests.engine.batch_reference import (
    PLAN,
    answer_plan,
    assert_plan_matches_peft,
    peft_model,
    peft_reference,
    request,
)


def llama_packages(base: Path, root: Path) -> dict[str, Path]:
    return {
        "growth": make_package(base, root / "growth", seed=1, targets=PROJECTIONS),
        "income": make_package(base, root / "income", seed=2, rank=8, targets=("q_proj", "v_proj")),
    }


@pytest.mark.parametrize(
    ("architecture", "batch_prefill", "run_ahead"),
    [
        ("llama", False, False),
        ("llama", True, False),
        ("llama", True, True),
        ("llama3", True, True),
        ("qwen2", True, True),
    ],
    ids=["smollm-one-prefill", "smollm-batched-prefill", "smollm-run-ahead", "llama3", "qwen2"],
)
def test_mixed_adapters_in_one_batch_match_peft_alone(
    tiny_model_dir,  # noqa: ANN001
    tmp_path: Path,
    architecture: str,
    batch_prefill: bool,
    run_ahead: bool,
) -> None:
    base = tiny_model_dir(architecture)
    packages = llama_packages(base, tmp_path)
    loaded = load_base_model(str(base), device="cpu")
    assert unsupported_reason(loaded.model, 256) is None
    engine = BatchEngine(
        loaded, max_batch=4, max_context_tokens=256, batch_prefill=batch_prefill,
        run_ahead=run_ahead,
    )  # fmt: skip
    results = answer_plan(engine, packages)
    assert (engine.steps_ahead > engine.steps // 2) if run_ahead else engine.steps_ahead == 0
    # Every prompt prefilled once; batched, several share a forward (the fifth waits for a
    # slot, so at least two forwards), else one forward each.
    assert engine.prefills.prompts == len(PLAN)
    batches = engine.prefills.batches
    assert 2 <= batches <= len(PLAN) if batch_prefill else batches == len(PLAN)
    reference_model, tokenizer = peft_model(base, packages, device="cpu")
    assert_plan_matches_peft(engine, results, reference_model, tokenizer)
    # The adapters really change the answers, so the equality above is about the right one.
    assert results[0][1] != peft_reference(
        reference_model, tokenizer, engine.prepare(request(*PLAN[0])).prompt_ids, None, 24
    )
