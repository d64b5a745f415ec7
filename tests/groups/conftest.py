"""One company (departments, people, adapters) on a live server per module; see
`tests/support/company.py`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.company import Company, start_company


@pytest.fixture(scope="module")
def company(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[Company]:
    with start_company(tmp_path_factory.mktemp("company"), tiny_llama_dir) as running:
        yield running
