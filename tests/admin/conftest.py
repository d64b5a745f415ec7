"""The web fixtures (settings, live servers, signed-in clients) for the admin pages' tests."""

from tests.web.conftest import make_settings, scripted_server  # noqa: F401 - fixtures
