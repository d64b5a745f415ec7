"""A migrated SQLite file per test (shared with tests/audit)."""

from tests.support.db import db_path, session_factory  # noqa: F401
