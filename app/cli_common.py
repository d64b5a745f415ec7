"""What every `teller` subcommand shares: the one-line error type, the argument parser that
reports a usage error in one line, the settings, and a database session.

Only the standard library and `app.config` are imported up front (the store when a session is
opened), so `training/` uses the same parser without pulling in SQLAlchemy or the web layer.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

from pydantic import ValidationError

from app.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

EXIT_BAD_INPUT = 2
"""Exit status of every refusal a user can fix (argparse uses 2 for usage errors too)."""


class CliError(Exception):
    """A user-fixable problem; the command prints it as one line and exits with status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line instead of usage + message.

    Subparsers made from it are of the same class, so one parser serves every subcommand.
    """

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(EXIT_BAD_INPUT)


def load_settings() -> Settings:
    """The `TELLER_*` settings, read as the server reads them.

    Raises:
        CliError: a setting is invalid (names the first one and why).
    """
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "settings"
        raise CliError(f"invalid setting {field}: {first['msg']}") from None


@contextmanager
def open_session(settings: Settings) -> Iterator[Session]:
    """A session on the configured database, migrated to the current schema first; its
    connections are closed when the block ends (tests run many commands in one process)."""
    from app.store.db import make_engine, make_session_factory, migrate

    logging.getLogger("alembic").setLevel(logging.WARNING)
    engine = make_engine(settings.resolved_database_url)
    try:
        migrate(engine)
        with make_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()
