"""The real `openai` package against a live Teller: models, chat and completions, errors."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from app.audit.service import API_KEY_REVOKED
from app.keys import service as keys
from tests.support.api import Api, settings_for, start_api

QUESTION = [{"role": "user", "content": "What is a bond coupon?"}]


def test_models_lists_the_base_and_every_adapter_version(api: Api) -> None:
    ids = [model.id for model in api.client().models.list()]
    base = Path(api.live.app.state.settings.base_model).name
    assert ids == [base, "finance", "finance@1", "finance@2"]
    assert api.client().models.retrieve("finance@2").id == "finance@2"


def test_chat_completion_with_a_pinned_adapter_is_answered_and_audited(api: Api) -> None:
    answer = api.client().chat.completions.create(
        model="finance@2", messages=QUESTION, max_tokens=8, temperature=0
    )
    choice = answer.choices[0]
    assert answer.object == "chat.completion" and answer.model == "finance@2"
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = answer.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    audited = api.api_calls()[-1]
    assert audited["actor"] == "analyst" and audited["endpoint"] == "chat.completions"
    assert (audited["adapter_name"], audited["adapter_version"]) == ("finance", 2)
    assert audited["text"] == choice.message.content and audited["status"] == "complete"
    assert audited["prompt"] == QUESTION


def test_streamed_chat_matches_the_unstreamed_answer(api: Api) -> None:
    client = api.client()
    whole = client.chat.completions.create(
        model="finance", messages=QUESTION, max_tokens=12, temperature=0
    )
    stream = client.chat.completions.create(
        model="finance",
        messages=QUESTION,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == (
        whole.usage.completion_tokens
    )


def test_raw_stream_ends_with_done(api: Api) -> None:
    body = {"model": "finance@1", "messages": QUESTION, "max_tokens": 4, "stream": True}
    headers = {"Authorization": f"Bearer {api.key}"}
    with httpx.stream(
        "POST", f"{api.live.url}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_adapters_change_the_answer(api: Api) -> None:
    client = api.client()
    base = client.models.list().data[0].id
    texts = {
        model: client.chat.completions.create(
            model=model, messages=QUESTION, max_tokens=10, temperature=0
        )
        .choices[0]
        .message.content
        for model in (base, "finance@1", "finance@2")
    }
    assert len(set(texts.values())) == 3, texts


def test_completions_streamed_and_not(api: Api) -> None:
    client = api.client()
    whole = client.completions.create(
        model="finance@1", prompt="Net present value is", max_tokens=6
    )
    assert whole.object == "text_completion" and whole.choices[0].text
    assert whole.usage.completion_tokens <= 6
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="finance@1", prompt="Net present value is", max_tokens=6, stream=True
        )
        if c.choices
    )
    assert streamed == whole.choices[0].text


def test_seed_makes_sampling_repeatable(api: Api) -> None:
    def sample(seed: int) -> str:
        answer = api.client().chat.completions.create(
            model="finance", messages=QUESTION, max_tokens=12, temperature=1.0, seed=seed
        )
        return answer.choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(7), sample(8), sample(9)}) > 1


def test_max_tokens_is_capped_by_the_server(api: Api) -> None:
    answer = api.client().completions.create(
        model="finance", prompt="Interest", max_tokens=5000, temperature=0
    )
    assert answer.usage.completion_tokens <= api.live.app.state.settings.max_new_tokens


def test_bad_key_is_401(api: Api) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        api.client(key="tlr_not-a-real-key").models.list()
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"
    response = httpx.get(f"{api.live.url}/v1/models", timeout=10)
    assert response.status_code == 401 and "error" in response.json()


def test_revoked_key_stops_working_at_once(api: Api) -> None:
    with api.live.app.state.session_factory() as session:
        from app.store.models import User

        user = session.get(User, api.user_id)
        made = keys.create_key(session=session, user=user, name="short-lived")
    client = api.client(key=made.secret)
    assert client.models.list().data
    with api.live.app.state.session_factory() as session:
        assert keys.revoke_key(
            session=session, key=keys.get_key(session=session, key_id=made.key.id)
        )
        from app.store.models import AuditRecord

        assert session.query(AuditRecord).filter(AuditRecord.action == API_KEY_REVOKED).count()
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_unknown_model_is_404(api: Api) -> None:
    calls = len(api.api_calls())
    for model in ("gpt-4o", "finance@9"):
        with pytest.raises(openai.NotFoundError) as caught:
            api.client().chat.completions.create(model=model, messages=QUESTION)
        assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        api.client().models.retrieve("nope")
    assert len(api.api_calls()) == calls


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"temperature": 5}, "temperature"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        ({"stop": ["a", ""]}, "stop"),
        ({"functions": [{"name": "f"}]}, None),  # legacy: tools are the way (test_structured)
    ],
)
def test_bad_requests_are_400_naming_the_field(api: Api, extra: dict, param: str | None) -> None:
    body = {"model": "finance", "messages": QUESTION, **extra}
    response = httpx.post(
        f"{api.live.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {api.key}"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"].startswith(param)


def test_malformed_json_and_oversized_input_are_400(api: Api) -> None:
    headers = {"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"}
    url = f"{api.live.url}/v1/chat/completions"
    assert httpx.post(url, content=b"{not json", headers=headers).status_code == 400
    huge = "x" * (api.live.app.state.settings.max_input_chars + 1)
    with pytest.raises(openai.BadRequestError, match="limit"):
        api.client().chat.completions.create(
            model="finance", messages=[{"role": "user", "content": huge}]
        )


def test_rate_limit_is_429_with_retry_after(tmp_path: Path, tiny_llama_dir: Path) -> None:
    settings = settings_for(tmp_path, tiny_llama_dir, messages_per_minute=2)
    with start_api(settings) as running:
        client = running.client()
        base = client.models.list().data[0].id
        for _ in range(2):
            client.completions.create(model=base, prompt="Cash", max_tokens=2)
        with pytest.raises(openai.RateLimitError) as caught:
            client.completions.create(model=base, prompt="Cash", max_tokens=2)
        assert int(caught.value.response.headers["Retry-After"]) >= 1
        assert caught.value.body["code"] == "rate_limit_exceeded"


def test_stop_sequences_cut_the_answer_before_them(api: Api) -> None:
    client = api.client()
    full = (
        client.completions.create(
            model="finance", prompt="A balance sheet", max_tokens=24, temperature=0
        )
        .choices[0]
        .text
    )
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    cut = client.completions.create(
        model="finance", prompt="A balance sheet", max_tokens=24, temperature=0, stop=[stop]
    ).choices[0]
    assert cut.text == full[: full.index(stop)] and cut.finish_reason == "stop"
