"""RemoteEngine against a live Teller upstream (tiny Llama), and vLLM's adapter endpoints."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from app.contract import ChatMessage, PromptFormat
from app.engine.factory import build_engine
from app.engine.loader import ModelLoadError
from app.engine.remote import RemoteEngine, UpstreamError, parse_model_map
from app.engine.types import (
    EngineBusy,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from tests.support.api import Api, import_adapters, settings_for, start_api

QUESTION = [ChatMessage("user", "What is working capital?")]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path):  # noqa: ANN201
    root = tmp_path_factory.mktemp("upstream")
    settings = settings_for(root, tiny_llama_dir, max_new_tokens=1500)
    import_adapters(settings, tiny_llama_dir, root / "packages", count=1)
    with start_api(settings) as running:
        yield running


def remote(upstream: Api, **kwargs: object) -> RemoteEngine:
    return RemoteEngine(upstream.live.url + "/v1/", api_key=upstream.key, **kwargs)


async def collect(engine: RemoteEngine, request: GenerationRequest) -> list:
    try:
        return [event async for event in engine.generate(request)]
    finally:
        await engine.close()


def test_discovers_the_upstream_base_and_streams_its_answer(upstream: Api) -> None:
    engine = remote(upstream)
    assert engine.model == Path(upstream.live.app.state.settings.base_model).name
    request = GenerationRequest(QUESTION, sampling=SamplingParams(temperature=0, max_new_tokens=8))
    events = asyncio.run(collect(engine, request))
    tokens, finish = events[:-1], events[-1]
    assert all(isinstance(e, TokenEvent) for e in tokens) and isinstance(finish, FinishEvent)
    audited = upstream.api_calls()[-1]
    assert finish.text == "".join(e.text for e in tokens) == audited["text"]
    assert (finish.prompt_tokens, finish.completion_tokens) == (
        audited["prompt_tokens"],
        audited["completion_tokens"],
    )
    assert audited["endpoint"] == "chat.completions" and audited["prompt"][0]["content"]


def test_cancelling_stops_the_upstream_generation(upstream: Api) -> None:
    engine = remote(upstream)
    request = GenerationRequest(
        QUESTION, sampling=SamplingParams(temperature=1.0, seed=3, max_new_tokens=1500)
    )

    async def run() -> FinishEvent:
        seen = 0
        async for event in engine.generate(request):
            if isinstance(event, TokenEvent):
                seen += 1
                if seen == 3:
                    request.cancel.set()
            else:
                return event
        raise AssertionError("no finish event")

    async def main() -> FinishEvent:
        try:
            return await run()
        finally:
            await engine.close()

    finish = asyncio.run(main())
    assert finish.reason == "cancelled"
    upstream_engine = upstream.live.app.state.engine
    deadline = time.monotonic() + 10
    while upstream_engine.active_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream_engine.active_streams == 0
    while upstream.api_calls()[-1]["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.api_calls()[-1]["status"] == "stopped"
    assert upstream.api_calls()[-1]["completion_tokens"] < 1500


def test_adapters_map_to_upstream_model_ids(upstream: Api, tmp_path: Path) -> None:
    """Another Teller has no load endpoint: `finance@1` is used by name, Alpaca-formatted."""
    engine = remote(upstream)

    async def run() -> list:
        await engine.load_adapter("finance@1", tmp_path, PromptFormat.ALPACA)
        with pytest.raises(UpstreamError, match="serves no model 'tax@1'"):
            await engine.load_adapter("tax@1", tmp_path, PromptFormat.ALPACA)
        assert engine.info.adapters == ("finance@1",)
        request = GenerationRequest(
            QUESTION, adapter="finance@1", sampling=SamplingParams(temperature=0, max_new_tokens=4)
        )
        return await collect(engine, request)

    events = asyncio.run(run())
    audited = upstream.api_calls()[-1]
    assert (audited["adapter_name"], audited["adapter_version"]) == ("finance", 1)
    assert audited["endpoint"] == "completions"
    assert "### Instruction:\nWhat is working capital?" in audited["prompt"]
    assert events[-1].text == audited["text"]


def test_a_bad_key_or_url_fails_at_start_with_one_line(upstream: Api, tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, Path("unused"), engine="remote", remote_url=upstream.live.url, remote_api_key="x"
    )
    with pytest.raises(ModelLoadError, match="refused GET /v1/models \\(401\\)"):
        build_engine(settings)
    settings.remote_url = "http://127.0.0.1:9"
    with pytest.raises(ModelLoadError, match="cannot reach"):
        build_engine(settings)


# ---- vLLM's side, as its OpenAI server answers (vLLM itself does not run on this box) ------


class FakeVllm:
    """Records calls; answers `load_lora_adapter` and `models` the way vLLM does."""

    def __init__(self, *, busy: bool = False) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.loaded: set[str] = set()
        self.busy = busy

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        self.calls.append((request.url.path, body))
        if self.busy:
            return httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "busy"})
        if request.url.path == "/v1/load_lora_adapter":
            if body["lora_name"] in self.loaded:
                message = f"The lora adapter '{body['lora_name']}' has already been loaded."
                return httpx.Response(400, json={"error": {"message": message}})
            self.loaded.add(body["lora_name"])
            return httpx.Response(200, text="Success")
        if request.url.path == "/v1/unload_lora_adapter":
            self.loaded.discard(body["lora_name"])
            return httpx.Response(200, text="Success")
        if request.url.path == "/v1/completions":
            chunks = [
                {"choices": [{"index": 0, "text": "Assets", "finish_reason": None}]},
                {"choices": [{"index": 0, "text": " less debts.", "finish_reason": "stop"}]},
                {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2}},
            ]
            text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})
        return httpx.Response(404, json={"detail": "Not Found"})


def test_adapters_are_pushed_to_vllm_with_its_view_of_the_store(tmp_path: Path) -> None:
    vllm = FakeVllm()
    store = tmp_path / "models" / "adapters"
    engine = RemoteEngine(
        "http://vllm:8000",
        model="meta-llama/Llama-3.1-8B",
        adapter_root="/mnt/teller-adapters",
        local_adapter_root=store,
        transport=httpx.MockTransport(vllm),
    )

    async def run() -> list:
        await engine.load_adapter("finance@3", store / "finance" / "3", PromptFormat.ALPACA)
        await engine.load_adapter("finance@3", store / "finance" / "3", PromptFormat.ALPACA)
        request = GenerationRequest(QUESTION, adapter="finance@3", sampling=SamplingParams())
        events = [event async for event in engine.generate(request)]
        await engine.unload_adapter("finance@3")
        await engine.close()
        return events

    events = asyncio.run(run())
    assert vllm.calls[0] == (
        "/v1/load_lora_adapter",
        {"lora_name": "finance@3", "lora_path": "/mnt/teller-adapters/finance/3"},
    )
    path, body = vllm.calls[2]
    assert path == "/v1/completions" and body["model"] == "finance@3"
    assert body["prompt"].endswith("### Response:\n") and "### Instruction:" in body["stop"]
    assert [e.text for e in events[:-1]] == ["Assets", " less debts."]
    assert (events[-1].reason, events[-1].prompt_tokens, events[-1].completion_tokens) == (
        "stop",
        11,
        2,
    )
    assert vllm.calls[-1] == ("/v1/unload_lora_adapter", {"lora_name": "finance@3"})
    assert not vllm.loaded


def test_a_busy_upstream_is_engine_busy_with_its_retry_after() -> None:
    engine = RemoteEngine(
        "http://vllm:8000", model="base", transport=httpx.MockTransport(FakeVllm(busy=True))
    )

    async def run() -> None:
        with pytest.raises(EngineBusy) as caught:
            async for _ in engine.generate(GenerationRequest(QUESTION)):
                pass
        assert caught.value.retry_after == 7
        await engine.close()

    asyncio.run(run())


def test_model_map_parsing() -> None:
    assert parse_model_map(" finance@3=fin-merged , tax=tax-v2,") == {
        "finance@3": "fin-merged",
        "tax": "tax-v2",
    }
    with pytest.raises(ValueError, match="NAME=MODEL"):
        parse_model_map("finance")
