"""Many `/v1` calls at once (issue 23's 32 streams): every one is answered, counted once in
usage, and the audit chain holds a start and an end row for each and verifies, on SQLite and
on PostgreSQL. Audit rows of answers starting together are committed in groups
(`app.audit.service`), a reservation is taken off the event loop (`Answer.reserve_off_loop`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from sqlalchemy import func, select, text

from app.answers.kinds import API, API_CALL, API_CALL_STARTED
from app.answers.lifecycle import Answer, AnswerContext
from app.answers.limits import LimitExceeded, UserLimits
from app.answers.streams import ActiveStreams
from app.audit.verify import verify_chain
from app.config import Settings
from app.store.db import make_engine, make_session_factory, migrate
from app.store.identity_models import UsageRecord
from app.store.models import AuditRecord
from tests.knowledge.postgres import postgres_cluster
from tests.support.api import Api, settings_for, start_api
from tests.support.scripted_engine import ScriptedEngine

CALLS = 32
WORDS = ["Free", " cash", " flow", " is", " cash", "."]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """ "" for the default SQLite file; a PostgreSQL database emptied for this test."""
    if request.param == "sqlite":
        return ""
    url = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    return url


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[Api]:
    settings = settings_for(
        tmp_path,
        tmp_path / "no-model",
        database_url=database_url,
        max_concurrent_streams=CALLS,
        messages_per_minute=10 * CALLS,
    )
    with start_api(settings, engine=ScriptedEngine(WORDS, delay=0.005)) as running:
        yield running


async def _ask_all(api: Api) -> list[str]:
    client = openai.AsyncOpenAI(
        base_url=f"{api.live.url}/v1", api_key=api.key, max_retries=0, timeout=60
    )

    async def ask(n: int) -> str:
        stream = await client.chat.completions.create(
            model="scripted",
            messages=[{"role": "user", "content": f"({n}) What is free cash flow?"}],
            stream=True,
        )
        parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        return "".join(parts)

    async with client:
        return await asyncio.gather(*(ask(n) for n in range(CALLS)))


def test_concurrent_calls_are_all_answered_counted_and_audited(api: Api) -> None:
    answers = asyncio.run(_ask_all(api))
    assert answers == ["".join(WORDS)] * CALLS
    settings = api.live.app.state.settings
    with api.live.app.state.session_factory() as session:
        report = verify_chain(session=session, retention_days=settings.audit_retention_days)
        rows = session.execute(
            select(AuditRecord.action, AuditRecord.actor_name, AuditRecord.details).where(
                AuditRecord.action.in_([API_CALL_STARTED, API_CALL])
            )
        ).all()
        usage = session.execute(
            select(func.count(), func.sum(UsageRecord.completion_tokens)).where(
                UsageRecord.user_id == api.user_id
            )
        ).one()
    assert report.ok, report.problems
    started = {json.loads(d)["call_id"] for action, _, d in rows if action == API_CALL_STARTED}
    ended = [json.loads(d) for action, _, d in rows if action == API_CALL]
    assert len(started) == CALLS and {e["call_id"] for e in ended} == started
    assert all(e["status"] == "complete" and e["text"] == "".join(WORDS) for e in ended)
    assert {name for _, name, _ in rows} == {"analyst"}
    assert tuple(usage) == (CALLS, CALLS * len(WORDS))
    assert api.live.app.state.limits.active_streams(api.user_id) == 0


def test_a_reservation_whose_caller_left_gives_its_slot_back(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")
    database = make_engine(settings.resolved_database_url)
    migrate(database)
    limits = UserLimits(messages_per_minute=1, max_streams=1)
    ctx = AnswerContext(
        settings=settings,
        engine=ScriptedEngine(),
        adapters=None,
        limits=limits,
        session_factory=make_session_factory(database),
        streams=ActiveStreams(),
    )

    async def leave_early() -> None:
        waiting = asyncio.create_task(
            Answer.reserve_off_loop(ctx, API, user_id=7, where={}, count_message=True)
        )
        await asyncio.sleep(0)  # the worker thread has the reservation in hand
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(1)  # the thread finishes the reservation nobody waits for

    asyncio.run(leave_early())
    with pytest.raises(LimitExceeded, match="1 messages in the last minute"):
        limits.check_message(7)  # the reservation was made (its message counted) ...
    assert limits.active_streams(7) == 0  # ... and its slot given back
    database.dispose()
