"""The web fixtures (settings, live servers, signed-in clients) for the admin pages' tests."""

from tests.support.web import (  # noqa: F401 - fixtures
    client,
    make_settings,
    scripted_server,
    server,
    user_client,
)
