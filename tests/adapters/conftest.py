"""Fixtures for the registry tests: packages for the tiny Llama and a store in a temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.adapters.archive import Limits
from app.adapters.registry import Registry
from tests.adapters.fixtures import finance_v1, finance_v2, packages_dir, tax_v1
from tests.support.db import db_path, session_factory

__all__ = ["db_path", "finance_v1", "finance_v2", "packages_dir", "session_factory", "tax_v1"]


@pytest.fixture
def registry(tmp_path: Path, tiny_llama_dir: Path) -> Registry:
    return Registry(
        tmp_path / "models" / "adapters",
        served_base=str(tiny_llama_dir),
        limits=Limits(max_archive_bytes=4 << 20, max_file_bytes=2 << 20),
        max_rank=16,
    )
