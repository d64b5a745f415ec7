"""An answer's start row is written while the engine already reads the prompt, so no text may
leave the server until that row is committed: when the database refuses it, the caller gets
an error and not a word of the answer, and the engine's work and the user's slot are given
back. The database refuses for real (a SQLite trigger, as a full disk or a locked file would)."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest
from sqlalchemy import text

from app.answers.kinds import API_CALL_STARTED
from app.audit.verify import verify_chain
from tests.support.api import Api, settings_for, start_api

REFUSE_START_ROWS = f"""
CREATE TRIGGER refuse_start_rows BEFORE INSERT ON audit_records
WHEN NEW.action = '{API_CALL_STARTED}'
BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END
"""


@pytest.fixture
def api(tmp_path: Path, tiny_falcon_dir: Path):  # noqa: ANN201
    settings = settings_for(
        tmp_path, tiny_falcon_dir, max_new_tokens=400, max_concurrent_streams=1, scheduler="batch"
    )
    with start_api(settings) as running:
        yield running


def set_refusal(api: Api, *, on: bool) -> None:
    with api.live.app.state.session_factory() as session:
        session.execute(text(REFUSE_START_ROWS if on else "DROP TRIGGER refuse_start_rows"))
        session.commit()


def freed(api: Api) -> bool:
    engine, limits = api.live.app.state.engine, api.live.app.state.limits
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if engine.active_streams == 0 and limits.active_streams(api.user_id) == 0:
            return True
        time.sleep(0.05)
    return False


def test_no_text_leaves_before_the_start_row_is_in(api: Api) -> None:
    client = api.client()
    base = client.models.list().data[0].id
    messages = [{"role": "user", "content": "Explain duration."}]
    set_refusal(api, on=True)

    with pytest.raises(openai.InternalServerError) as streamed:  # refused before any chunk
        for _chunk in client.chat.completions.create(
            model=base, messages=messages, max_tokens=400, stream=True
        ):
            pytest.fail("a chunk of an unaudited answer reached the caller")
    assert streamed.value.status_code == 503
    assert "could not record this answer" in streamed.value.message
    assert streamed.value.response.headers["retry-after"]
    with pytest.raises(openai.InternalServerError) as whole:
        client.chat.completions.create(model=base, messages=messages, max_tokens=400)
    assert whole.value.status_code == 503
    assert freed(api), "the engine or the user's one slot is still held"

    set_refusal(api, on=False)
    answer = client.chat.completions.create(model=base, messages=messages, max_tokens=4)
    assert answer.choices[0].message.content
    streamed_call, whole_call, answered = api.api_calls()  # their end rows, oldest first
    for call in (streamed_call, whole_call):
        assert call["status"] == "error" and "could not record" in call["error"]
        assert call["text"] == ""
    assert answered["status"] == "complete" and answered["text"]
    with api.live.app.state.session_factory() as session:
        assert verify_chain(session=session, retention_days=0).problems == []
