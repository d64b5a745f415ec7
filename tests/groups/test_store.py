"""Groups, quotas and usage on SQLite and on a real PostgreSQL; migration 0006 down and up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session, sessionmaker

from app.answers.limits import LimitExceeded
from app.auth.service import create_user
from app.groups import service as groups
from app.groups.schemas import GroupForm
from app.store import identity_crud, knowledge_crud
from app.store.db import alembic_config, make_engine, make_session_factory, migrate
from app.usage import service as usage
from tests.knowledge.postgres import postgres_cluster

TABLES = {
    "user_groups",
    "user_group_members",
    "user_group_adapters",
    "user_group_knowledge_bases",
    "user_identities",
    "user_quotas",
    "usage_records",
    "sign_in_requests",
}
Factory = sessionmaker[Session]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'teller.db'}")
    else:
        engine = make_engine(request.getfixturevalue("postgres_url"))
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    migrate(engine)
    yield make_session_factory(engine)
    engine.dispose()


def test_grants_quotas_and_usage(factory: Factory) -> None:
    with factory() as session:
        admin = create_user(session=session, username="a", password="a-password-12", admin=True)
        ann = create_user(session=session, username="ann", password="ann-password-12")
        kb = knowledge_crud.create_knowledge_base(session=session, name="Filings")
        assert groups.allowed_adapters(session=session, user=ann) is None  # no group yet
        group = groups.save_group(
            session=session,
            form=GroupForm(
                name="Tax",
                adapters=("base", "tax"),
                knowledge_base_ids=(kb.id,),
                default_adapter="tax",
                tokens_per_day=100,
            ),
            actor_id=admin.id,
        )
        assert groups.allowed_adapters(session=session, user=ann) == frozenset()
        groups.add_member(session=session, group=group, user=ann, actor_id=admin.id)
        access = groups.access_for(session=session, user=ann)
        assert access.adapters == {"base", "tax"} and access.knowledge_bases == {kb.id}
        assert groups.permitted_choice(access, None, None) == "tax"
        assert groups.allowed_adapters(session=session, user=admin) is None

        noon = datetime(2026, 3, 10, 12, tzinfo=UTC)
        for day, tokens in (
            (date(2026, 3, 9), 500),
            (date(2026, 3, 10), 60),
            (date(2026, 3, 10), 40),
        ):
            identity_crud.add_usage(
                session=session,
                user_id=ann.id,
                day=day,
                surface="chat",
                adapter="tax",
                prompt_tokens=tokens // 2,
                completion_tokens=tokens - tokens // 2,
            )
        with pytest.raises(LimitExceeded, match="the group Tax"):
            usage.check_quota(session=session, user_id=ann.id, now=noon)
        figures = usage.summary(session=session, days=2, now=noon)
        assert figures.by_group["Tax"].tokens == 600 and figures.by_group["Tax"].answers == 3
        assert figures.by_day[date(2026, 3, 10)].tokens == 100
        assert "2026-03-09,ann,Tax,chat,tax,1,250,250,500" in usage.csv_text(
            session=session, days=2, now=noon
        )


def test_migration_0006_down_and_up(factory: Factory) -> None:
    engine = factory.kw["bind"]
    config = alembic_config(engine.url.render_as_string(hide_password=False))

    def run(step: Callable[..., None], target: str) -> None:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            step(config, target)

    run(command.downgrade, "0005")
    assert not TABLES & set(inspect(engine).get_table_names())
    run(command.upgrade, "head")
    assert TABLES <= set(inspect(engine).get_table_names())
