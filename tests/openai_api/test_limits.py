"""What one `/v1` request may carry: messages (every one counts, empty ones too), characters,
body bytes and a seed the engine can use. Refusals come in OpenAI's error shape, before any
prompt is prepared or any body beyond the limit is read."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.api import Api, settings_for, start_api
from tests.support.asgi import http_scope
from tests.support.scripted_engine import ScriptedEngine

LIMIT_BYTES = 64 * 1024
CHUNK = 8 * 1024


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Iterator[Api]:
    settings = settings_for(
        tmp_path_factory.mktemp("limits"),
        tiny_llama_dir,
        max_messages=50,
        max_input_chars=2_000,
        max_request_bytes=LIMIT_BYTES,
    )
    with start_api(settings, engine=ScriptedEngine(["fine"])) as running:
        yield running


def post(api: Api, body: dict) -> httpx.Response:
    return httpx.post(
        f"{api.live.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {api.key}"},
        timeout=30,
    )


def prepared(api: Api) -> int:
    """Requests that reached the engine (a refused one must not)."""
    return len(api.live.app.state.engine.requests)


@pytest.mark.parametrize(
    ("messages", "code", "words"),
    [
        # 2,000 messages without content: once 0 characters, and 67 s of trimming for everyone.
        ([{"role": "user"}] * 2_000, "array_above_max_length", "2,000 messages"),
        ([{"role": "user", "content": ""}] * 51, "array_above_max_length", "limit is 50"),
        # 40 empty messages are within the count but each counts 16 characters: 640 + text.
        (
            [{"role": "user", "content": ""}] * 40 + [{"role": "user", "content": "x" * 1_400}],
            "context_length_exceeded",
            "2,056 characters",
        ),
    ],
)
def test_too_many_or_too_long_messages_are_refused_before_the_engine(
    limited: Api, messages: list[dict], code: str, words: str
) -> None:
    before = prepared(limited)
    response = post(limited, {"model": "scripted", "messages": messages})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        code,
        "messages",
        "invalid_request_error",
    )
    assert words in error["message"]
    assert prepared(limited) == before


def test_within_the_limits_is_answered(limited: Api) -> None:
    answer = limited.client().chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "x"}] * 50
    )
    assert answer.choices[0].message.content == "fine"


def test_a_completion_prompt_counts_the_same_way(limited: Api) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        limited.client().completions.create(model="scripted", prompt="x" * 1_990)
    assert caught.value.body["code"] == "context_length_exceeded"
    assert caught.value.body["param"] == "prompt"


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 10**30])
def test_a_seed_beyond_int64_is_a_400_naming_it(limited: Api, seed: int) -> None:
    response = post(
        limited,
        {"model": "scripted", "messages": [{"role": "user", "content": "x"}], "seed": seed},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "seed"


def test_the_largest_int64_seed_is_accepted(limited: Api) -> None:
    answer = limited.client().chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "x"}], seed=2**63 - 1
    )
    assert limited.live.app.state.engine.requests[-1].sampling.seed == 2**63 - 1
    assert answer.choices[0].message.content == "fine"


def call_with_body(api: Api, *, content_length: int | None) -> tuple[int, dict, int]:
    """POST /v1/chat/completions straight into the app with an endless body (JSON whitespace,
    8 KiB a message): (status, JSON answer, body messages the app pulled)."""
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b" " * CHUNK, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    headers = [
        (b"authorization", f"Bearer {api.key}".encode()),
        (b"content-type", b"application/json"),
    ]
    if content_length is None:
        headers.append((b"transfer-encoding", b"chunked"))
    else:
        headers.append((b"content-length", str(content_length).encode()))
    scope = http_scope("POST", "/v1/chat/completions", headers)
    # Without a limit this never ends: the body does not.
    asyncio.run(asyncio.wait_for(api.live.app(scope, receive, send), timeout=60))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), pulled


def test_a_declared_oversized_body_is_refused_before_a_byte_is_read(limited: Api) -> None:
    status, answer, pulled = call_with_body(limited, content_length=100 * 1024 * 1024)
    assert status == 413
    assert answer["error"]["code"] == "request_too_large"
    assert f"{LIMIT_BYTES:,} bytes" in answer["error"]["message"]
    assert pulled == 0


def test_a_chunked_body_is_read_only_up_to_the_limit(limited: Api) -> None:
    status, answer, pulled = call_with_body(limited, content_length=None)
    assert status == 413 and answer["error"]["code"] == "request_too_large"
    assert pulled <= LIMIT_BYTES // CHUNK + 1
