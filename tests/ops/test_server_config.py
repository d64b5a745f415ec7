"""`teller serve` runs uvicorn on uvloop and httptools (pinned in pyproject.toml): the loop
and parser that bench/results/v1-request-overhead-cpu-uvloop.json measured."""

from __future__ import annotations

import asyncio
from pathlib import Path

import uvloop
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings
from app.ops.serving import server_config


def test_serve_runs_on_uvloop_and_httptools(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    config = server_config(FastAPI(), settings)
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol
    loop = config.get_loop_factory()()
    try:
        assert isinstance(loop, uvloop.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()
