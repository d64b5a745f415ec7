"""Fixtures for training tests: small Alpaca files and a fast config on the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.samples import finance_records, write_jsonl
from training.config import TrainConfig
from training.config_io import load_config


@pytest.fixture(scope="session")
def finance_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "finance.jsonl", finance_records())


@pytest.fixture
def tiny_config(tiny_llama_dir: Path, finance_file: Path, tmp_path: Path) -> TrainConfig:
    """The `tiny` preset pointed at the session's tiny Llama, test data and a temp run folder."""
    return load_config(
        "tiny",
        [
            f"base_model={tiny_llama_dir}",
            f"data.path={finance_file}",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
