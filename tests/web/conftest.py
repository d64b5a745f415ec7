"""Web fixtures: settings on a temporary data dir, a real app on a real uvicorn server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.main import create_app
from tests.live import LiveServer, live_server

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def make_settings(tmp_path: Path, tiny_llama_dir: Path):  # noqa: ANN201
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "models_dir": tmp_path / "models",
            "base_model": str(tiny_llama_dir),
            "max_new_tokens": 64,
            "default_temperature": 0.0,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def server(make_settings) -> Iterator[LiveServer]:  # noqa: ANN001
    with live_server(create_app(make_settings())) as live:
        yield live


class Browserless:
    """An httpx client that behaves like a page: keeps cookies and echoes the CSRF token."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=60)
        self.csrf = ""

    def page(self, path: str = "/") -> httpx.Response:
        response = self.http.get(path)
        match = CSRF_RE.search(response.text)
        if match:
            self.csrf = match.group(1)
        return response

    def post(
        self, path: str, data: dict[str, str] | None = None, **kwargs: object
    ) -> httpx.Response:
        form = {"csrf_token": self.csrf, **(data or {})}
        return self.http.post(path, data=form, **kwargs)


@pytest.fixture
def client(server: LiveServer) -> Iterator[Browserless]:
    browser = Browserless(server.url)
    browser.page("/")
    yield browser
    browser.http.close()
