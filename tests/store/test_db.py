"""The database files: a URL with `%` migrates, and the SQLite files are private to Teller."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from app.config import Settings
from app.store.db import alembic_config, make_engine, migrate
from tests.support.cli import teller_process


@pytest.fixture
def shared_umask() -> Iterator[None]:
    """The usual umask, under which files come out readable by every local account."""
    saved = os.umask(0o022)
    yield
    os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_data_dir_with_percent_signs_migrates_and_the_cli_runs(tmp_path: Path) -> None:
    """`%40` (an escaped `@`) and a bare `%` once crashed start-up in Alembic's configparser,
    and `%40` in the path sent SQLite to a different folder than the one created."""
    data = tmp_path / "50%off" / "p%40ss"
    url = Settings(data_dir=data).resolved_database_url
    engine = make_engine(url)
    migrate(engine)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM audit_head")).scalar() == 1
    engine.dispose()
    assert (data / "teller.db").is_file(), "the database is where TELLER_DATA_DIR says"

    verify = teller_process(data, "audit", "verify")
    assert verify.returncode == 0, verify.stderr
    assert "audit chain intact" in verify.stdout


def test_a_postgresql_password_with_percent_escapes_reaches_alembic_unchanged() -> None:
    url = "postgresql+psycopg://teller:p%40ss%25word@db.internal/teller"
    assert alembic_config(url).get_main_option("sqlalchemy.url") == url


def test_a_new_sqlite_database_is_readable_by_its_owner_only(
    tmp_path: Path,
    shared_umask: None,
) -> None:
    data = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data / 'teller.db'}")
    migrate(engine)
    with engine.connect() as connection:  # a reader keeps the -wal and -shm files open
        connection.execute(text("SELECT 1"))
        files = sorted(p.name for p in data.iterdir())
        assert files == ["teller.db", "teller.db-shm", "teller.db-wal"]
        assert {name: mode(data / name) for name in files} == dict.fromkeys(files, 0o600)
    engine.dispose()
    assert mode(data) == 0o700


def test_existing_world_readable_database_files_are_made_private_on_start(
    tmp_path: Path,
    shared_umask: None,
) -> None:
    data = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data / 'teller.db'}")
    migrate(engine)
    engine.dispose()
    (data / "teller.db-wal").touch()  # as a crash of an older version would leave it
    for path in data.iterdir():
        path.chmod(0o644)
    engine = make_engine(f"sqlite:///{data / 'teller.db'}")
    assert mode(data / "teller.db-wal") == 0o600, "narrowed before SQLite reads it"
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
        modes = {p.name: mode(p) for p in data.iterdir()}
        assert modes == {"teller.db": 0o600, "teller.db-shm": 0o600, "teller.db-wal": 0o600}
    engine.dispose()
