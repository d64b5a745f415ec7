"""The engine in a process of its own (`TELLER_ENGINE_PROCESS`): the same answers as the engine
in this process, the same refusals at once, cancels that reach it, a killed engine process
that ends its answers with the reason and comes back with its adapters, and the real app
serving `/v1` over it (and stopping it when the app stops)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import Settings
from app.contract import ChatMessage, PromptFormat
from app.engine.factory import build_local_engine
from app.engine.loader import ModelLoadError
from app.engine.process.proxy import EngineProcess
from app.engine.types import (
    EngineBusy,
    EngineError,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from tests.adapters.packages import make_package
from tests.ops.promtext import scrape, value
from tests.support.api import settings_for, start_api


def engine_settings(root: Path, base: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": root / "data",
        "models_dir": root / "models",
        "base_model": str(base),
        "device": "cpu",
        "scheduler": "batch",
        "max_context_tokens": 256,
        "max_queue": 3,
        "engine_process": "on",
        "log_format": "text",
    }
    return Settings(**(values | overrides))


def ask(text: str, adapter: str | None = None, tokens: int = 12) -> GenerationRequest:
    return GenerationRequest(
        messages=[ChatMessage(role="user", content=text)],
        adapter=adapter,
        sampling=SamplingParams(temperature=0.0, max_new_tokens=tokens),
    )


async def answer(engine: object, request: GenerationRequest) -> tuple[str, FinishEvent]:
    return await drain(engine.generate(request))  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def adapter(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_package(tiny_llama_dir, tmp_path_factory.mktemp("adapter") / "tax", seed=3)


@pytest.fixture(scope="module")
def engine(
    tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineProcess]:
    started = EngineProcess(engine_settings(tmp_path_factory.mktemp("process"), tiny_llama_dir))
    yield started
    asyncio.run(started.close())


def test_answers_match_the_engine_in_this_process(
    engine: EngineProcess, adapter: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    local = build_local_engine(engine_settings(tmp_path, tiny_llama_dir, engine_process="off"))

    async def both() -> tuple[list, list]:
        answers = []
        for served in (engine, local):
            await served.load_adapter("tax", adapter, PromptFormat.ALPACA)
            requests = [ask("What is duration?"), ask("Define yield.", "tax"), ask("Hi", "tax")]
            answers.append(await asyncio.gather(*(answer(served, r) for r in requests)))
            await served.unload_adapter("tax")
        await local.close()
        return answers[0], answers[1]

    over_the_socket, in_process = asyncio.run(both())
    assert [text for text, _ in over_the_socket] == [text for text, _ in in_process]
    assert [(f.reason, f.prompt_tokens, f.completion_tokens) for _, f in over_the_socket] == [
        (f.reason, f.prompt_tokens, f.completion_tokens) for _, f in in_process
    ]
    assert over_the_socket[0][0] != over_the_socket[1][0]  # the adapter changed the answer
    assert engine.info.model == local.info.model and engine.info.adapters == ()
    assert engine.count_tokens("net present value") == local.count_tokens("net present value")
    assert engine.prefills.prompts >= 3
    assert engine.active_streams == 0 and engine.queue_depth == 0


def test_a_full_queue_and_an_unknown_adapter_are_refused_at_once(engine: EngineProcess) -> None:
    async def refused() -> list[tuple[str, FinishEvent]]:
        with pytest.raises(EngineError, match="'absent' is not loaded"):
            engine.generate(ask("Hi", "absent"))
        streams = [engine.generate(ask(f"question {n}")) for n in range(3)]  # max_queue=3
        with pytest.raises(EngineBusy) as busy:
            engine.generate(ask("one too many"))
        assert busy.value.retry_after > 0
        return [await drain(stream) for stream in streams]

    answered = asyncio.run(refused())
    assert [finish.reason for _, finish in answered] == ["length"] * 3
    assert engine.queue_depth == 0


async def drain(stream: object) -> tuple[str, FinishEvent]:
    texts = []
    async for event in stream:  # type: ignore[attr-defined]
        if isinstance(event, FinishEvent):
            return "".join(texts), event
        texts.append(event.text)
    raise AssertionError("the stream ended without a FinishEvent")


def test_a_cancel_set_by_the_caller_reaches_the_engine(engine: EngineProcess) -> None:
    async def cancelled() -> FinishEvent:
        request = ask("Tell me a long story.", tokens=200)
        async for event in engine.generate(request):
            if isinstance(event, FinishEvent):
                return event
            request.cancel.set()  # the stop button: the caller reads on until the end
        raise AssertionError("no FinishEvent")

    finish = asyncio.run(cancelled())
    assert finish.reason == "cancelled" and finish.completion_tokens < 200


def test_leaving_a_stream_stops_its_answer(engine: EngineProcess) -> None:
    async def left() -> tuple[int, tuple[str, FinishEvent]]:
        stream = engine.generate(ask("Tell me a long story.", tokens=200))
        async for event in stream:
            assert isinstance(event, TokenEvent)
            break
        await stream.aclose()  # type: ignore[attr-defined]
        reading = engine.active_streams
        return reading, await answer(engine, ask("Hi"))

    reading, (_, after) = asyncio.run(left())
    assert reading == 0
    assert after.reason == "length"  # the engine moved on to the next answer


def test_a_killed_engine_process_ends_its_answers_and_comes_back(
    tiny_llama_dir: Path, adapter: Path, tmp_path: Path
) -> None:
    engine = EngineProcess(engine_settings(tmp_path, tiny_llama_dir))

    async def killed() -> tuple[str, str, FinishEvent, str]:
        await engine.load_adapter("tax", adapter, PromptFormat.ALPACA)
        before, _ = await answer(engine, ask("Define yield.", "tax"))
        stream = engine.generate(ask("Tell me a long story.", "tax", tokens=250))
        async for event in stream:
            assert isinstance(event, TokenEvent)
            os.kill(engine._child.process.pid, signal.SIGKILL)  # noqa: SLF001 - the test's aim
            break
        async for event in stream:
            if isinstance(event, FinishEvent):
                ended = event
        with pytest.raises(EngineBusy) as busy:  # while the new process loads the model
            engine.generate(ask("Hi"))
        refused = f"{busy.value} (retry after {busy.value.retry_after} s)"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                after, _ = await answer(engine, ask("Define yield.", "tax"))
                break
            except EngineBusy:
                await asyncio.sleep(0.2)
        await engine.close()
        return before, after, ended, refused

    before, after, ended, refused = asyncio.run(killed())
    assert ended.reason == "error" and "model process stopped" in ended.error
    assert isinstance(ended.failure, EngineError)
    assert "busy" in refused
    assert after == before  # the adapter was loaded again in the new process
    assert engine.info.adapters == ("tax",)


def test_a_model_that_cannot_load_is_reported_with_its_reason(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no-such-model"):
        EngineProcess(engine_settings(tmp_path, missing))


def test_the_app_serves_v1_over_an_engine_process_and_stops_it(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    settings = settings_for(
        tmp_path, tiny_llama_dir, engine_process="on", scheduler="batch", device="cpu"
    )
    with start_api(settings) as api:
        engine = api.live.app.state.engine
        assert isinstance(engine, EngineProcess)
        child = engine._child.process  # noqa: SLF001 - to see it stop with the app
        client = api.client()
        model = client.models.list().data[0].id
        chunks = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "What is a bond?"}],
            max_tokens=10,
            stream=True,
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert text
        plain = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "What is a bond?"}], max_tokens=10
        )
        assert plain.choices[0].message.content == text  # greedy: the same answer
        # the engine's counters reach /metrics from its process
        assert value(scrape(api.live.url), "teller_prefilled_prompts_total") >= 2
    assert child.wait(timeout=30) == 0  # the app's shutdown stopped the engine process


SERVER = """
import sys, time
from pathlib import Path
from app.config import Settings
from app.engine.process.proxy import EngineProcess
settings = Settings(data_dir=Path(sys.argv[2]), base_model=sys.argv[1], device="cpu",
                    scheduler="batch", max_context_tokens=256, engine_process="on")
engine = EngineProcess(settings)
print(engine._child.process.pid, flush=True)
time.sleep(600)
"""


def test_a_killed_server_leaves_no_engine_process_behind(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """The engine process holds the GPU's memory: it must not outlive its server."""
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tiny_llama_dir), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert server.stdout is not None
    child = int(server.stdout.readline())
    server.kill()
    server.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and running(child):
        time.sleep(0.1)
    assert not running(child)


def running(pid: int) -> bool:
    """Whether `pid` still runs (an exited one its new parent has not reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
