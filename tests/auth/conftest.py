"""The web fixtures (settings, live servers with a scripted engine), shared with tests/auth."""

from tests.web.conftest import make_settings, scripted_server  # noqa: F401
