"""Knowledge fixtures: settings on a temporary data dir, a migrated SQLite or PostgreSQL
database, a real server with a scripted engine (the steps tests take: `steps.py`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from app.config import Settings
from app.knowledge import service
from app.main import create_app
from app.store.db import make_engine, make_session_factory, migrate
from app.store.knowledge_models import KnowledgeBase
from tests.knowledge.postgres import postgres_cluster
from tests.knowledge.steps import Factory
from tests.live import LiveServer, live_server


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", models_dir=tmp_path / "models")


@pytest.fixture
def sqlite_factory(settings: Settings) -> Iterator[Factory]:
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_cluster() as url:
        yield url


@pytest.fixture
def postgres_factory(postgres_url: str) -> Iterator[Factory]:
    """A migrated, empty schema on the session's PostgreSQL (rebuilt for every test)."""
    engine = make_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    migrate(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def factory(request: pytest.FixtureRequest) -> Factory:
    """Each test that takes it runs once on SQLite (FTS5) and once on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_factory")


@pytest.fixture
def make_base(settings: Settings) -> Callable[..., KnowledgeBase]:
    def make(factory: Factory, name: str = "Filings") -> KnowledgeBase:
        with factory() as session:
            return service.create_knowledge_base(
                session=session, name=name, actor_id=None, via="test"
            )

    return make


@pytest.fixture
def knowledge_server(tmp_path: Path) -> Callable[..., LiveServer]:
    """`with knowledge_server(**settings) as live:` a real uvicorn with a scripted engine."""
    import contextlib

    from tests.support.scripted_engine import ScriptedEngine

    @contextlib.contextmanager
    def start(**overrides: object) -> Iterator[LiveServer]:
        values: dict[str, object] = {
            "data_dir": tmp_path / "data",
            "models_dir": tmp_path / "models",
        }
        values.update(overrides)
        app = create_app(Settings(**values), engine=ScriptedEngine(["Scripted."]))
        with live_server(app) as live:
            yield live

    return start
