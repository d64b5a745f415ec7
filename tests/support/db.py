"""A migrated SQLite file per test, as the app and the CLI open it, and a way to tamper with
it behind the app's back."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.store.db import make_engine, make_session_factory, migrate


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "teller.db"


@pytest.fixture
def session_factory(db_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(f"sqlite:///{db_path}")
    migrate(engine)
    yield make_session_factory(engine)
    engine.dispose()


def tamper(db_path: Path, sql: str, *params: object) -> None:
    """Change the database directly, as someone with file access would."""
    with sqlite3.connect(db_path) as connection:
        connection.execute(sql, params)
