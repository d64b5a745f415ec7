"""A client that hangs up stops its generation and frees its slot (streamed and not)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.support.api import Api, settings_for, start_api

LONG = 1500
"""Far more tokens than the tests wait for: an answer that ran to the end would show."""


@pytest.fixture(params=["sequential", "batch"])
def slow_api(request: pytest.FixtureRequest, tmp_path: Path):  # noqa: ANN201
    """The sequential engine (tiny Llama) and the batch scheduler (tiny Falcon) alike."""
    scheduler = request.param
    base = request.getfixturevalue(
        "tiny_llama_dir" if scheduler == "sequential" else "tiny_falcon_dir"
    )
    settings = settings_for(
        tmp_path, base, max_new_tokens=LONG, max_concurrent_streams=1, scheduler=scheduler
    )
    with start_api(settings) as running:
        yield running


def wait_until(condition, timeout: float = 15.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def assert_freed(api: Api) -> dict:
    """The engine stream and the user's slot are given back; the call is audited as stopped."""
    engine = api.live.app.state.engine
    limits = api.live.app.state.limits
    assert wait_until(
        lambda: engine.active_streams == 0 and limits.active_streams(api.user_id) == 0
    )
    assert wait_until(lambda: len(api.api_calls()) == 1)
    audited = api.api_calls()[0]
    assert audited["status"] == "stopped"
    assert audited["completion_tokens"] < LONG
    # The slot really is free: with one slot per user, a new call is served at once.
    again = api.client().completions.create(model=audited["model"], prompt="Yield", max_tokens=2)
    assert again.choices[0].finish_reason == "length"
    return audited


def test_closing_a_stream_stops_the_generation(slow_api: Api) -> None:
    client = slow_api.client()
    base = client.models.list().data[0].id
    stream = client.chat.completions.create(
        model=base,
        messages=[{"role": "user", "content": "Explain duration."}],
        max_tokens=LONG,
        temperature=1.0,
        seed=1,
        stream=True,
    )
    received = 0
    for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received == 3:
            break
    assert slow_api.live.app.state.engine.active_streams == 1
    stream.close()
    audited = assert_freed(slow_api)
    assert audited["stream"] is True and audited["text"]


def test_hanging_up_on_an_unstreamed_call_stops_it(slow_api: Api) -> None:
    base = slow_api.client().models.list().data[0].id
    body = {"model": base, "prompt": "Explain convexity.", "max_tokens": LONG, "temperature": 1.0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{slow_api.live.url}/v1/completions",
            json=body,
            headers={"Authorization": f"Bearer {slow_api.key}"},
            timeout=httpx.Timeout(10, read=0.5),
        )
    audited = assert_freed(slow_api)
    assert audited["stream"] is False
