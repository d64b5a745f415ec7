"""Which scheduler the factory builds: Llama- and Falcon-family models take the batch scheduler
when asked (on CPU too) and on CUDA by default; on CPU `auto` keeps the sequential engine."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.config import Settings
from app.engine.factory import build_engine
from app.engine.schedulers.batch import BatchEngine
from app.engine.schedulers.sequential import SequentialEngine


@pytest.mark.parametrize(
    ("architecture", "scheduler", "expected"),
    [
        ("llama", "batch", BatchEngine),
        ("qwen2", "batch", BatchEngine),
        ("falcon", "batch", BatchEngine),
        ("llama", "auto", SequentialEngine),
        ("llama", "sequential", SequentialEngine),
    ],
)
def test_the_scheduler_follows_the_setting(
    tiny_model_dir,  # noqa: ANN001
    tmp_path: Path,
    architecture: str,
    scheduler: str,
    expected: type,
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        models_dir=tmp_path / "models",
        base_model=str(tiny_model_dir(architecture)),
        device="cpu",
        scheduler=scheduler,
        max_context_tokens=256,
    )
    engine = build_engine(settings)
    try:
        assert type(engine) is expected
    finally:
        asyncio.run(engine.close())
