"""A migrated SQLite file per test (shared with tests/audit)."""

from tests.audit.conftest import db_path, session_factory  # noqa: F401
