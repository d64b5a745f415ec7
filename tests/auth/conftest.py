"""Fixtures shared with tests/web (live servers) and tests/audit (a migrated SQLite file)."""

from tests.audit.conftest import db_path, session_factory  # noqa: F401
from tests.web.conftest import make_settings, scripted_server  # noqa: F401
