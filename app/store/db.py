"""Database engine, sessions and migrations.

SQLite runs in WAL mode with a busy timeout so the streaming writer and page readers don't
block each other; any other SQLAlchemy URL (PostgreSQL) works unchanged.

The SQLite files hold every prompt, answer and password hash, so only Teller's own account may
read them: the folder is created 0700 and the database file 0600 before SQLite opens it
(SQLite gives its `-wal`, `-shm` and `-journal` files the database file's mode), and files an
older version left readable by others are narrowed at every start.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import CursorResult, Engine, Result, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
POOL_SIZE = 16
"""Connections kept open between requests: about as many as threads that use the database at
once in a burst (a key check per request on the request thread pool, an answer's audit rows on
worker threads). SQLAlchemy's default of 5 made a burst of 32 `/v1` calls open and close a
connection for most of them (bench/results/v1-request-overhead-cpu.json)."""
MAX_OVERFLOW = 32
"""More connections opened under a larger burst, closed once returned."""


def prepare_sqlite_file(path: Path) -> None:
    """Create the database's folder and file private to this account, or make them so.

    Only files are narrowed when they exist already: the folder may be one the operator shares
    on purpose (TELLER_DATABASE_URL can point anywhere), and private files suffice there.
    """
    path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE))
    for candidate in (path, *(path.with_name(path.name + s) for s in SQLITE_SIDE_FILES)):
        try:
            if candidate.stat().st_mode & 0o077:
                candidate.chmod(PRIVATE_FILE)
        except FileNotFoundError:
            continue
        except PermissionError:  # another account's file: say so, SQLite decides if it opens
            log.warning("%s is readable by other accounts and not ours to chmod", candidate)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # The path as SQLAlchemy will open it (it decodes %XX escapes in the URL).
        database = make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            prepare_sqlite_file(Path(database))
        pooled = bool(database) and database != ":memory:" and "mode=memory" not in url
        sizes = {"pool_size": POOL_SIZE, "max_overflow": MAX_OVERFLOW} if pooled else {}
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **sizes
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def _ini_value(value: str) -> str:
    """Alembic keeps options in a configparser, which reads `%` as interpolation: a URL with
    an escaped password (`p%40ss`) or a path with `%` would crash start-up unescaped."""
    return value.replace("%", "%%")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", _ini_value(str(MIGRATIONS_DIR)))
    config.set_main_option("sqlalchemy.url", _ini_value(url))
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (run at every start; a no-op when current)."""
    config = alembic_config(str(engine.url.render_as_string(hide_password=False)))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def ping(engine: Engine) -> bool:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - readiness answers yes/no
        return False


def rows_affected(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE changed (SQLAlchemy types `execute` as a plain `Result`,
    whose cursor form carries the count)."""
    return cast(CursorResult[Any], result).rowcount
