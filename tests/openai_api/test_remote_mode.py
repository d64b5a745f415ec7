"""A second Teller in remote mode: its users chat, the first Teller generates, history stays
with the second."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from app.main import create_app
from app.store.models import Message
from tests.live import LiveServer, live_server, read_sse
from tests.support.api import Api, import_adapters, settings_for, start_api
from tests.support.web import Browserless, signed_in_client

STREAM_RE = re.compile(r'sse-connect="([^"]+)"')


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path
) -> Iterator[tuple[Api, LiveServer]]:
    """(first: local engine with finance@1, second: remote engine pointed at the first)."""
    first_root, second_root = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    first_settings = settings_for(first_root, tiny_llama_dir, max_new_tokens=16)
    import_adapters(first_settings, tiny_llama_dir, first_root / "packages", count=1)
    with start_api(first_settings) as first:
        second_settings = settings_for(
            second_root,
            tiny_llama_dir,  # the registry checks adapters against the base's config
            engine="remote",
            remote_url=first.live.url,
            remote_api_key=first.key,
            max_new_tokens=16,
        )
        import_adapters(second_settings, tiny_llama_dir, second_root / "packages", count=1)
        with live_server(create_app(second_settings)) as second:
            yield first, second


def chat(browser: Browserless, question: str, adapter: str = "") -> str:
    """Ask on the chat page and read the answer's SSE stream to the end; return its text."""
    page = browser.post("/c", {"content": question, "adapter": adapter}, follow_redirects=True)
    assert page.status_code == 200, page.text[:300]
    tokens: list[str] = []
    with browser.http.stream("GET", STREAM_RE.search(page.text).group(1)) as response:
        for event, data in read_sse(response):
            if event == "token":
                tokens.append(html.unescape(data))
            elif event == "done":
                assert 'data-status="complete"' in data
                break
    return "".join(tokens)


def stored_answers(server: LiveServer) -> list[Message]:
    with server.app.state.session_factory() as session:
        return list(session.query(Message).filter(Message.role == "assistant").order_by(Message.id))


def test_chat_on_the_second_is_answered_by_the_first_and_stored_on_the_second(
    pair: tuple[Api, LiveServer],
) -> None:
    first, second = pair
    browser = signed_in_client(second, "carol", "carol-password-1")
    answer = chat(browser, "What is EBITDA?")
    assert answer

    generated = first.api_calls()[-1]
    assert generated["actor"] == "analyst"  # the second's key on the first
    assert generated["text"] == answer and generated["status"] == "complete"
    assert generated["prompt"][-1] == {"role": "user", "content": "What is EBITDA?"}
    [stored] = stored_answers(second)
    assert stored.content == answer and stored.status == "complete"
    assert stored.model == Path(first.live.app.state.settings.base_model).name
    assert stored.completion_tokens == generated["completion_tokens"]
    assert not stored_answers(first.live)  # the first keeps no conversation of it
    assert browser.page(f"/c/{stored.conversation_id}").text.count("What is EBITDA?") >= 1


def test_an_adapter_chosen_on_the_second_runs_on_the_first(pair: tuple[Api, LiveServer]) -> None:
    first, second = pair
    browser = signed_in_client(second, "dave", "dave-password-1")
    answer = chat(browser, "Define liquidity.", adapter="finance")
    generated = first.api_calls()[-1]
    assert (generated["adapter_name"], generated["adapter_version"]) == ("finance", 1)
    assert generated["text"] == answer
    stored = stored_answers(second)[-1]
    assert (stored.adapter_name, stored.adapter_version) == ("finance", 1)
    assert stored.content == answer


def test_the_second_serves_the_api_too(pair: tuple[Api, LiveServer]) -> None:
    first, second = pair
    from tests.support.api import add_user_with_key

    _, key = add_user_with_key(second, "erin")
    client = openai.OpenAI(base_url=f"{second.url}/v1", api_key=key, max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert ids[1:] == ["finance", "finance@1"]
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model=ids[0],
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=5,
            temperature=0,
            stream=True,
        )
        if c.choices
    )
    assert streamed == first.api_calls()[-1]["text"]


def test_activation_on_the_second_needs_the_upstream_to_serve_the_version(
    pair: tuple[Api, LiveServer], tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """(Runs last: it changes the second's default adapter.)"""
    import httpx

    from app.adapters.admin_token import read_token
    from app.adapters.service import registry_for
    from tests.adapters.packages import make_package

    first, second = pair
    settings = second.app.state.settings
    registry = registry_for(settings)
    registry.import_path(make_package(tiny_llama_dir, tmp_path / "v2", name="finance", seed=5))
    admin = httpx.Client(
        base_url=second.url,
        headers={"Authorization": f"Bearer {read_token(settings.data_dir)}"},
        timeout=30,
    )
    refused = admin.post("/admin/api/adapters/activate", json={"ref": "finance@2"})
    assert refused.status_code == 400 and "serves no model 'finance@2'" in refused.text
    assert registry.state().default is None
    activated = admin.post("/admin/api/adapters/activate", json={"ref": "finance@1"})
    assert activated.status_code == 200, activated.text
    assert registry.state().default == ("finance", 1)
    assert second.app.state.engine.info.adapters == ("finance@1",)
