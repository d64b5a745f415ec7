"""Engine fixtures: the tiny Llama-family variants the batched Llama path is checked on, and
two LoRA packages for the tiny Falcon (`packages`) the batch scheduler tests share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.engine.tiny_models import Architecture, ensure_tiny_model
from tests.adapters.packages import make_package
from tests.engine.batch_reference import FALCON_PROJECTIONS


@pytest.fixture(scope="session")
def tiny_model_dir(
    default_model_dir: Path, tiny_models_dir: Path
) -> Callable[[Architecture], Path]:
    """`tiny_model_dir("qwen2")`: that tiny model's folder, built once per session."""

    def build(architecture: Architecture) -> Path:
        return ensure_tiny_model(architecture, tiny_models_dir, default_model_dir)

    return build


@pytest.fixture(scope="module")
def packages(tiny_falcon_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("falcon-adapters")
    return {
        "growth": make_package(
            tiny_falcon_dir, root / "growth", seed=1, targets=FALCON_PROJECTIONS
        ),
        "income": make_package(
            tiny_falcon_dir, root / "income", seed=2, rank=8, targets=("query_key_value",)
        ),
    }
