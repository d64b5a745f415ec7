"""Engine fixtures: the tiny Llama-family variants the batched Llama path is checked on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.engine.tiny_models import Architecture, ensure_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(
    default_model_dir: Path, tiny_models_dir: Path
) -> Callable[[Architecture], Path]:
    """`tiny_model_dir("qwen2")`: that tiny model's folder, built once per session."""

    def build(architecture: Architecture) -> Path:
        return ensure_tiny_model(architecture, tiny_models_dir, default_model_dir)

    return build
