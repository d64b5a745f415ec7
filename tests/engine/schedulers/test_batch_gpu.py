"""The batch scheduler on a GPU as it serves there: CUDA graphs and run-ahead decode.

A tiny Falcon and a tiny Llama (grouped-query attention, as SmolLM2) in float32 (no
quantization, so cuBLAS's row results do not depend on which kernels a batch size picks
beyond float rounding): answers that leave early and join
mid-flight, over two adapters, must equal what plain PEFT `generate` gives each request
alone on the same card, token for token. The CPU tests check the same bookkeeping without
graphs; this one checks the device side: static graph buffers, tokens fed to the next step
without a trip through the host, the step queued ahead of its predecessor's tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.engine.loader import load_base_model
from app.engine.models.llama import PROJECTIONS as LLAMA_PROJECTIONS
from app.engine.schedulers.batch import BatchEngine
from app.engine.tiny_models import build_tiny_model
from tests.adapters.packages import make_package
from tests.engine.batch_reference import (  # noqa: E402
    FALCON_PROJECTIONS,
    answer_plan,
    assert_plan_matches_peft,
    peft_model,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

REPO = Path(__file__).resolve().parents[3]
TOKENIZER = REPO / "models" / "SmolLM2-135M-Instruct"  # only its tokenizer files are read


@pytest.fixture(scope="module", params=["falcon", "llama"])
def model_and_adapters(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Path]]:
    architecture = request.param
    root = tmp_path_factory.mktemp(f"gpu-{architecture}")
    base = build_tiny_model(architecture, TOKENIZER, root / architecture)
    every, few = (
        (FALCON_PROJECTIONS, ("query_key_value",))
        if architecture == "falcon"
        else (LLAMA_PROJECTIONS, ("q_proj", "v_proj"))
    )
    adapters = {
        "growth": make_package(base, root / "growth", seed=1, targets=every),
        "income": make_package(base, root / "income", seed=2, rank=8, targets=few),
    }
    return base, adapters


def test_graphed_run_ahead_answers_equal_peft_on_the_gpu(
    model_and_adapters: tuple[Path, dict[str, Path]], device: str = "cuda"
) -> None:
    base, adapters = model_and_adapters
    exact = {"device": device, "quantization": "none", "dtype": "float32"}
    engine = BatchEngine(load_base_model(str(base), **exact), max_batch=4, max_context_tokens=256)
    results = answer_plan(engine, adapters)
    assert engine._graphed is not None or device == "cpu", "no CUDA graphs were replayed"
    assert engine.steps_ahead > engine.steps // 2
    model, tokenizer = peft_model(base, adapters, **exact)
    assert_plan_matches_peft(engine, results, model, tokenizer)
