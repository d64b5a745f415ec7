"""Every `/v1` call leaves an audit row: refused ones (unknown model, unsupported field, a
malformed body) as `api.refused`, model listings as `api.models`, each with its key and
address; answered calls keep their `api.call_started` / `api.call` pair."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from app.openai_api.router import API_MODELS, API_REFUSED
from app.store.models import AuditRecord
from tests.support.api import Api, settings_for, start_api
from tests.support.scripted_engine import ScriptedEngine


def rows(api: Api, action: str) -> list[tuple[str | None, str | None, dict]]:
    with api.live.app.state.session_factory() as session:
        found = session.query(AuditRecord).filter(AuditRecord.action == action)
        return [(r.actor_name, r.ip, json.loads(r.details)) for r in found.order_by(AuditRecord.id)]


def test_refused_calls_and_model_lists_are_audited(tmp_path: Path, tiny_llama_dir: Path) -> None:
    with start_api(settings_for(tmp_path, tiny_llama_dir), engine=ScriptedEngine()) as api:
        client = api.client()
        served = [model.id for model in client.models.list().data]
        client.models.retrieve(served[0])
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("no-such-model")
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model="no-such-model", messages=[{"role": "user", "content": "hi"}]
            )
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model=served[0], messages=[{"role": "user", "content": "hi"}], logprobs=True
            )
        malformed = httpx.post(
            f"{api.live.url}/v1/completions",
            content=b"{not json",
            headers={"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"},
        )
        assert malformed.status_code == 400
        answered = client.chat.completions.create(
            model=served[0], messages=[{"role": "user", "content": "hi"}]
        )
        assert answered.choices[0].message.content == "Hello there."

        listed = rows(api, API_MODELS)
        assert [(actor, ip) for actor, ip, _ in listed] == [("analyst", "127.0.0.1")] * 2
        assert listed[0][2]["models"] == len(served) and listed[1][2]["model"] == served[0]
        refused = [
            (d["endpoint"], d["status"], d.get("code")) for _, _, d in rows(api, API_REFUSED)
        ]
        assert refused == [
            ("models", 404, None),
            ("chat.completions", 404, "model_not_found"),
            ("chat.completions", 400, None),
            ("completions", 400, None),
        ]
        for actor, ip, details in rows(api, API_REFUSED):
            assert (actor, ip) == ("analyst", "127.0.0.1") and details["key_id"]
        # The answered call has its own rows, not a refusal.
        assert len(api.api_calls()) == 1
