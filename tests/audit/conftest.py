"""Audit tests: a migrated SQLite file per test, and live servers with a scripted engine."""

from tests.support.db import db_path, session_factory  # noqa: F401 - fixtures
from tests.support.web import make_settings, scripted_server  # noqa: F401 - fixtures
