"""`tools` and `response_format` with the real `openai` client: constrained decoding makes even
the tiny random model's answers valid JSON against the schema, streamed or not."""

from __future__ import annotations

import json

import openai
import pytest

from tests.support.api import Api

QUESTION = [{"role": "user", "content": "What rate applies to a USD loan?"}]
DECISION = {
    "type": "object",
    "properties": {
        "currency": {"enum": ["USD", "EUR", "GBP"]},
        "approved": {"type": "boolean"},
        "grade": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["currency", "approved", "grade"],
    "additionalProperties": False,
}
RATE_TOOL = {
    "type": "function",
    "function": {
        "name": "get_rate",
        "description": "The current lending rate for a currency.",
        "parameters": {
            "type": "object",
            "properties": {"currency": {"enum": ["USD", "EUR"]}},
            "required": ["currency"],
            "additionalProperties": False,
        },
    },
}


def _valid_decision(text: str) -> dict:
    data = json.loads(text)
    assert set(data) == {"currency", "approved", "grade"}
    assert data["currency"] in ("USD", "EUR", "GBP") and isinstance(data["approved"], bool)
    assert 1 <= data["grade"] <= 5
    return data


def _schema_format() -> dict:
    return {"type": "json_schema", "json_schema": {"name": "decision", "schema": DECISION}}


def test_json_schema_answer_is_valid(api: Api) -> None:
    answer = api.client().chat.completions.create(
        model="finance", messages=QUESTION, response_format=_schema_format(), temperature=0
    )
    assert answer.choices[0].finish_reason == "stop"
    _valid_decision(answer.choices[0].message.content)


def test_json_schema_streamed_is_valid_and_matches(api: Api) -> None:
    client = api.client()
    whole = client.chat.completions.create(
        model="finance", messages=QUESTION, response_format=_schema_format(), temperature=0.9,
        seed=3,
    )  # fmt: skip
    chunks = list(
        client.chat.completions.create(
            model="finance",
            messages=QUESTION,
            response_format=_schema_format(),
            temperature=0.9,
            seed=3,
            stream=True,
        )  # fmt: skip
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert _valid_decision(text) == _valid_decision(whole.choices[0].message.content)


def test_json_object_answer_parses(api: Api) -> None:
    answer = api.client().chat.completions.create(
        model="finance",
        messages=QUESTION,
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=64,
    )
    if answer.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(answer.choices[0].message.content), dict)
    else:  # cut by max_tokens: still a prefix of an object
        assert answer.choices[0].message.content.startswith("{")


def test_required_tool_call_and_the_round_trip(api: Api) -> None:
    client = api.client()
    first = client.chat.completions.create(
        model="finance", messages=QUESTION, tools=[RATE_TOOL], tool_choice="required",
        temperature=0,
    )  # fmt: skip
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_rate"
    assert json.loads(call.function.arguments)["currency"] in ("USD", "EUR")
    second = client.chat.completions.create(
        model="finance",
        messages=[
            *QUESTION,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"rate": 0.0525}'},
        ],
        tools=[RATE_TOOL],
        tool_choice="none",
        temperature=0,
        max_tokens=8,
    )
    assert second.choices[0].message.content and not second.choices[0].message.tool_calls
    prompt = api.api_calls()[-1]["prompt"]
    assert any("<tool_response>" in m["content"] and '"rate": 0.0525' in m["content"]
               for m in prompt)  # fmt: skip
    assert any(m["role"] == "assistant" and "<tool_call>" in m["content"] for m in prompt)
    assert "get_rate" not in prompt[0]["content"]  # tool_choice none: tools not offered


def test_named_tool_streamed(api: Api) -> None:
    chunks = list(
        api.client().chat.completions.create(
            model="finance",
            messages=QUESTION,
            tools=[RATE_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_rate"}},
            temperature=0,
            stream=True,
        )  # fmt: skip
    )
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and calls[0].function.name == "get_rate" and calls[0].id
    assert json.loads(calls[0].function.arguments)["currency"] in ("USD", "EUR")
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_auto_answers_with_a_call_or_text(api: Api) -> None:
    answer = api.client().chat.completions.create(
        model="finance", messages=QUESTION, tools=[RATE_TOOL], temperature=0, max_tokens=32
    )
    message = answer.choices[0].message
    if message.tool_calls:
        assert answer.choices[0].finish_reason == "tool_calls"
    else:
        assert not message.content.lstrip().startswith("<")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "bogus"}}}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "needs a json_schema"),
        ({"tools": [RATE_TOOL], "tool_choice": {"type": "function",
                                                "function": {"name": "other"}}}, "'other'"),
        ({"tool_choice": "required"}, "tool_choice needs tools"),
        ({"functions": [{"name": "f"}]}, "send them as tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    ],
)  # fmt: skip
def test_bad_structure_is_refused_with_what_to_fix(api: Api, extra: dict, fragment: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        api.client().chat.completions.create(model="finance", messages=QUESTION, **extra)
    assert fragment in refused.value.message
