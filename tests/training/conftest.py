"""Fixtures for training tests: small Alpaca files and a fast config on the tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import TrainConfig
from training.config_io import load_config


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def finance_records(n: int = 48) -> list[dict]:
    """Short, repetitive finance Q&A so a tiny model's loss falls within a few steps."""
    records = []
    for i in range(n):
        rate = 2 + i % 9
        principal = 100 * (1 + i % 7)
        interest = principal * rate / 100
        records.append(
            {
                "instruction": f"Simple interest on ${principal} at {rate}% for one year?",
                "input": "",
                "output": f"{principal} x {rate}% = {interest:.2f}. Answer: {interest:.2f}",
                "check": {
                    "kind": "simple_interest",
                    "params": {"p": principal, "r": rate},
                    "answer": interest,
                    "unit": "USD",
                },
            }
        )
        if i % 3 == 0:
            records.append(
                {
                    "instruction": "Define liquidity.",
                    "input": f"Audience {i}",
                    "output": "How fast an asset turns into cash at a fair price.",
                }
            )
    return records


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
