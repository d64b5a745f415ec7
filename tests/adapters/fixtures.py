"""Package fixtures shared by tests/adapters and tests/web (import them into a test module)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.adapters.packages import make_package


@pytest.fixture(scope="session")
def packages_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("packages")


@pytest.fixture(scope="session")
def finance_v1(tiny_llama_dir: Path, packages_dir: Path) -> Path:
    return make_package(tiny_llama_dir, packages_dir / "finance-v1", name="finance", seed=1)


@pytest.fixture(scope="session")
def finance_v2(tiny_llama_dir: Path, packages_dir: Path) -> Path:
    return make_package(tiny_llama_dir, packages_dir / "finance-v2", name="finance", seed=2)


@pytest.fixture(scope="session")
def tax_v1(tiny_llama_dir: Path, packages_dir: Path) -> Path:
    return make_package(
        tiny_llama_dir, packages_dir / "tax-v1", name="tax", seed=3, targets=("o_proj", "up_proj")
    )
