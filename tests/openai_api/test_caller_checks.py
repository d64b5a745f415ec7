"""What each `/v1` call checks is read from the database on that call, in one statement each
(the key with its owner, the owner's grants, their quotas: `app.keys.service.key_owner`,
`app.groups.service.access_of`, `app.usage.service.limits_for`), never cached: an admin's
change takes effect on the very next request, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from sqlalchemy import text

from app.auth import service as accounts
from app.groups import service as groups
from app.groups.schemas import GroupForm
from app.keys import service as keys
from app.store.db import make_engine
from app.store.models import User
from app.usage import service as usage
from tests.knowledge.postgres import postgres_cluster
from tests.support.api import Api, settings_for, start_api
from tests.support.scripted_engine import ScriptedEngine

WORDS = ["Cash", " is", " king", "."]
QUESTION = [{"role": "user", "content": "What is working capital?"}]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    database_url = ""
    if request.param == "postgres":
        database_url = request.getfixturevalue("postgres_url")
        engine = make_engine(database_url)
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    settings = settings_for(tmp_path, tmp_path / "no-model", database_url=database_url)
    with start_api(settings, engine=ScriptedEngine(WORDS)) as running:
        yield running


def test_grants_quotas_and_revocation_hold_from_the_very_next_call(api: Api) -> None:
    client = api.client()

    def ask() -> str:
        answer = client.chat.completions.create(model="scripted", messages=QUESTION)
        return answer.choices[0].message.content or ""

    def model_ids() -> set[str]:
        return {model.id for model in client.models.list().data}

    assert ask() == "".join(WORDS) and model_ids() == {"scripted"}
    factory = api.live.app.state.session_factory
    with factory() as session:
        boss = accounts.create_user(
            session=session, username="boss", password="boss-password-1", admin=True
        )
        boss_id = boss.id
        form = GroupForm(name="Dept A", adapters=("base",))
        dept = groups.save_group(session=session, form=form, actor_id=boss_id)

    # A group now exists and the analyst is in none: nothing is granted to them.
    assert model_ids() == set()
    with pytest.raises(openai.NotFoundError):
        ask()

    with factory() as session:
        analyst = session.get(User, api.user_id)
        assert analyst is not None
        groups.add_member(session=session, group=dept, user=analyst, actor_id=boss_id)
    assert model_ids() == {"scripted"} and ask() == "".join(WORDS)

    # Quotas: the group's, then the user's own; each used up at once, lifted at once.
    with factory() as session:
        form = GroupForm(name="Dept A", adapters=("base",), tokens_per_day=1)
        group = session.merge(dept)
        groups.save_group(session=session, form=form, actor_id=boss_id, group=group)
    with pytest.raises(openai.RateLimitError, match="the group Dept A"):
        ask()
    with factory() as session:
        form = GroupForm(name="Dept A", adapters=("base",))
        groups.save_group(session=session, form=form, actor_id=boss_id, group=session.merge(dept))
        analyst = session.get(User, api.user_id)
        usage.set_user_quota(
            session=session, user=analyst, per_day=None, per_month=1, actor_id=boss_id
        )
    with pytest.raises(openai.RateLimitError, match="your own quota"):
        ask()
    with factory() as session:
        analyst = session.get(User, api.user_id)
        usage.set_user_quota(
            session=session, user=analyst, per_day=None, per_month=None, actor_id=boss_id
        )
    assert ask() == "".join(WORDS)

    # The key itself: revoked between two calls, refused on the second.
    with factory() as session:
        key = keys.list_keys(session=session, user_id=api.user_id)[0]
        assert keys.revoke_key(session=session, key=key, actor_id=boss_id)
    with pytest.raises(openai.AuthenticationError):
        ask()
