"""One live Teller server per module for the `/v1` tests (see `tests/support/api.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.api import Api, import_adapters, settings_for, start_api


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[Api]:
    """One server for the module: the tiny Llama, adapter versions finance@1 and finance@2."""
    root = tmp_path_factory.mktemp("api")
    settings = settings_for(root, tiny_llama_dir)
    import_adapters(settings, tiny_llama_dir, root / "packages")
    with start_api(settings) as running:
        yield running
