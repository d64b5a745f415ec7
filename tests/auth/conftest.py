"""Auth tests: live servers (the web fixtures) and a migrated SQLite file."""

from tests.support.db import db_path, session_factory  # noqa: F401 - fixtures
from tests.support.web import make_settings, scripted_server  # noqa: F401 - fixtures
