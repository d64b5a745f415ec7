"""Tokens that pile up while the server is busy go out together, and nothing else changes.

The real `openai` client streams from a live Teller on either scheduler. Holding the server's
event loop for a moment after the first chunk (as many streams at once do) lets the engine's
tokens queue up; they then leave in fewer chunks, while the text, the finish reason and the
usage stay exactly those of a stream read as it is made and of the unstreamed answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.engine.schedulers.batch import BatchEngine
from tests.support.api import Api, import_adapters, settings_for, start_api

QUESTION = [{"role": "user", "content": "Explain what a bond coupon is, step by step."}]
TOKENS = 48
BUSY_SECONDS = 1.5


@pytest.fixture(scope="module", params=["sequential", "batch"])
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path
) -> Iterator[Api]:
    root = tmp_path_factory.mktemp(f"coalescing-{request.param}")
    settings = settings_for(root, tiny_llama_dir, scheduler=request.param)
    import_adapters(settings, tiny_llama_dir, root / "packages", count=1)
    with start_api(settings) as running:
        assert isinstance(running.live.app.state.engine, BatchEngine) == (request.param == "batch")
        yield running


def stream(api: Api, *, busy_after_first: float = 0.0, **kwargs: object) -> list:
    """The chunks of one streamed answer; with `busy_after_first`, the server's event loop is
    held that long once the first chunk arrived (the engine goes on generating meanwhile)."""
    loop = api.live.server.servers[0].get_loop()
    chunks = []
    for chunk in api.client().chat.completions.create(
        model="finance",
        messages=QUESTION,
        max_tokens=TOKENS,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        **kwargs,
    ):
        chunks.append(chunk)
        if len(chunks) == 1 and busy_after_first:
            loop.call_soon_threadsafe(time.sleep, busy_after_first)
    return chunks


def content(chunks: list) -> list[str]:
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


def finish_reason(chunks: list) -> str | None:
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] and not any(reasons[:-1]), "only the last choice chunk finishes"
    return reasons[-1]


def test_tokens_waiting_go_out_in_fewer_chunks_with_the_same_answer(api: Api) -> None:
    whole = api.client().chat.completions.create(
        model="finance", messages=QUESTION, max_tokens=TOKENS, temperature=0
    )
    assert whole.usage.completion_tokens > 16, "the answer is long enough to pile up"
    as_made = stream(api)
    piled = stream(api, busy_after_first=BUSY_SECONDS)

    assert len(content(piled)) < len(content(as_made)), "tokens that waited left together"
    assert "".join(content(piled)) == "".join(content(as_made)) == whole.choices[0].message.content
    assert finish_reason(piled) == finish_reason(as_made) == whole.choices[0].finish_reason
    for chunks in (piled, as_made):
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
        assert all(c.usage is None for c in chunks[:-1])
        assert len({c.id for c in chunks}) == 1 and all(c.model == "finance" for c in chunks)
    audited = api.api_calls()[-1]
    assert audited["text"] == whole.choices[0].message.content
    assert audited["completion_tokens"] == whole.usage.completion_tokens
