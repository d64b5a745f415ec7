"""Answer tests that need a live server use the web fixtures (a scripted engine, no model)."""

from tests.support.web import make_settings, scripted_server  # noqa: F401 - fixtures
