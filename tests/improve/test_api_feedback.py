"""`/v1` feedback with the real openai client: every answer carries `x-teller-call-id`, and
`POST /v1/feedback` rates it (a correction included), as the chat's thumbs do."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from sqlalchemy import select

from app.store.improve_models import Feedback
from app.store.models import AuditRecord, Conversation
from tests.support.api import add_user_with_key, settings_for, start_api
from tests.support.scripted_engine import ScriptedEngine


def _rate(client: openai.OpenAI, **body: str) -> dict:
    response = client.post("/feedback", cast_to=httpx.Response, body=body)
    return json.loads(response.text)


def test_v1_answers_are_rated_by_call_id(tmp_path: Path, tiny_llama_dir: Path) -> None:
    engine = ScriptedEngine(("It is", " 25."), delay=0.0)
    with start_api(settings_for(tmp_path, tiny_llama_dir), engine=engine) as api:
        client = api.client()
        model = client.models.list().data[0].id
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "VAT on 100 at 20%?"}]
        )
        call_id = raw.headers["x-teller-call-id"]
        assert raw.parse().choices[0].message.content == "It is 25."
        with client.chat.completions.with_streaming_response.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], stream=True
        ) as streamed:
            assert len(streamed.headers["x-teller-call-id"]) == 32
            streamed.read()
        done = client.completions.with_raw_response.create(model=model, prompt="1+1=")
        assert done.headers["x-teller-call-id"] not in ("", call_id)
        assert call_id in {c["call_id"] for c in api.api_calls()}

        rated = _rate(client, call_id=call_id, rating="down", correction="It is 20.")
        assert rated["rating"] == "down" and rated["has_correction"] is True
        again = _rate(client, call_id=call_id, rating="down", comment="rate is 20%",
                      correction="VAT is 20.")  # fmt: skip
        assert again["id"] == rated["id"] and again["message_id"] == rated["message_id"]

        # Bad input says what to fix; someone else's call is not found.
        with pytest.raises(openai.BadRequestError, match="rating"):
            _rate(client, call_id=call_id, rating="meh")
        with pytest.raises(openai.BadRequestError, match="32 hex digits"):
            _rate(client, call_id="nope", rating="up")
        _, other_key = add_user_with_key(api.live, "other")
        with pytest.raises(openai.NotFoundError, match="No finished call"):
            _rate(api.client(other_key), call_id=call_id, rating="up")

        with api.live.app.state.session_factory() as session:
            row = session.scalar(select(Feedback))
            assert row is not None
            assert (row.rating, row.comment, row.correction) == (-1, "rate is 20%", "VAT is 20.")
            kept = session.get(Conversation, call_id)
            assert kept is not None and kept.user_id == api.user_id
            assert [(m.role, m.content) for m in kept.messages] == [
                ("user", "VAT on 100 at 20%?"),
                ("assistant", "It is 25."),
            ]
            audited = [
                (r.action, json.loads(r.details)["via"])
                for r in session.scalars(
                    select(AuditRecord).where(AuditRecord.action.like("feedback.%"))
                )
            ]
            assert audited == [("feedback.add", "api"), ("feedback.change", "api")]
