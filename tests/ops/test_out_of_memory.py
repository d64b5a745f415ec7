"""A GPU out-of-memory error fails that request (503 or an `error` event), not the server.

There is no GPU here, so the real engine (tiny Llama on CPU) gets a model whose forward pass
raises `torch.OutOfMemoryError` when the test arms it — exactly what CUDA raises — and the
engine's own handling, the service and the routes run unchanged.
"""

from __future__ import annotations

import contextlib
import html
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import torch

from app.engine.factory import build_engine
from app.keys import service as keys
from app.main import create_app
from tests.live import LiveServer, live_server, read_sse
from tests.ops.promtext import scrape, value
from tests.support.web import ADMIN_NAME, ADMIN_PASSWORD, Browserless, signed_in_client

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')


class OutOfMemoryOnce:
    """A forward pre-hook: the next `arm()`ed forward pass raises CUDA's out-of-memory error."""

    def __init__(self) -> None:
        self._armed = threading.Event()
        self.raised = 0

    def arm(self) -> None:
        self._armed.set()

    def __call__(self, module: torch.nn.Module, args: object) -> None:
        if self._armed.is_set():
            self._armed.clear()
            self.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@dataclass
class OomServer:
    live: LiveServer
    oom: OutOfMemoryOnce
    api_key: str


@pytest.fixture
def oom_server(make_settings) -> Iterator[OomServer]:  # noqa: ANN001
    settings = make_settings(max_new_tokens=8, messages_per_minute=1000)
    engine = build_engine(settings)
    oom = OutOfMemoryOnce()
    engine.model.register_forward_pre_hook(oom)
    try:
        with live_server(create_app(settings, engine=engine)) as live:
            with live.app.state.session_factory() as session:
                from app.auth import service as accounts

                user = accounts.create_user(
                    session=session, username="api", password="api-password-1"
                )
                secret = keys.create_key(session=session, user=user, name="oom").secret
            yield OomServer(live, oom, secret)
    finally:
        with contextlib.suppress(Exception):
            import asyncio

            asyncio.run(engine.close())


def completion(server: OomServer, *, stream: bool = False) -> httpx.Response:
    return httpx.post(
        f"{server.live.url}/v1/completions",
        headers={"Authorization": f"Bearer {server.api_key}"},
        json={"model": "tiny-random-llama", "prompt": "Net present value", "stream": stream},
        timeout=60,
    )


def test_api_request_gets_503_and_the_next_one_succeeds(oom_server: OomServer) -> None:
    before = scrape(oom_server.live.url)
    oom_server.oom.arm()
    failed = completion(oom_server)
    assert failed.status_code == 503
    assert failed.headers["retry-after"].isdigit()
    assert failed.json()["error"]["code"] == "out_of_memory"
    assert "out of GPU memory" in failed.json()["error"]["message"]
    assert oom_server.oom.raised == 1

    again = completion(oom_server)
    assert again.status_code == 200, again.text
    assert again.json()["choices"][0]["text"]
    # A streamed call that fails before its first byte is a 503 too.
    oom_server.oom.arm()
    assert completion(oom_server, stream=True).status_code == 503
    assert completion(oom_server, stream=True).status_code == 200

    after = scrape(oom_server.live.url)
    assert (
        value(after, "teller_out_of_memory_total") - value(before, "teller_out_of_memory_total")
        == 2
    )
    assert (
        value(after, "teller_answers_total", surface="api", status="error")
        - value(before, "teller_answers_total", surface="api", status="error")
        == 2
    )
    assert httpx.get(f"{oom_server.live.url}/readyz").status_code == 200


def read_answer(client: Browserless, stream_url: str) -> list[tuple[str, str]]:
    with client.http.stream("GET", stream_url) as response:
        events = []
        for event, data in read_sse(response):
            events.append((event, data))
            if event == "done":
                return events
    return events


def test_chat_answer_gets_an_error_event_and_is_stored_as_error(oom_server: OomServer) -> None:
    client = signed_in_client(oom_server.live, ADMIN_NAME, ADMIN_PASSWORD, admin=True)
    oom_server.oom.arm()
    page = client.post("/c", {"content": "What is duration?"}, follow_redirects=True)
    conversation = page.url.path
    streamed = read_answer(client, STREAM_RE.search(page.text).group(1))
    # The adapter tag comes first, as the answer starts; then the failure and the stored answer.
    assert streamed[0][0] == "adapter"
    events = streamed[1:]
    names = [name for name, _ in events]
    assert names == ["error", "done"]
    assert html.unescape(events[0][1]) == "out of GPU memory"
    assert 'data-status="error"' in events[1][1]
    assert "The answer failed: out of GPU memory" in html.unescape(events[1][1])

    # The same conversation goes on: the next answer streams and is stored complete.
    reply = client.post(
        f"{conversation}/messages", {"content": "Try again"}, headers={"HX-Request": "true"}
    )
    assert reply.status_code == 200
    events = read_answer(client, STREAM_RE.search(reply.text).group(1))
    assert "token" in {name for name, _ in events}
    assert 'data-status="complete"' in events[-1][1]
    with oom_server.live.app.state.session_factory() as session:
        from app.store.models import Message

        stored = [
            (m.status, m.error)
            for m in session.query(Message).filter_by(role="assistant").order_by(Message.id)
        ]
    assert stored == [("error", "out of GPU memory"), ("complete", None)]
