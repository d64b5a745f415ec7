"""Tests of app/web (templating, CSRF, Markdown) run against the shared web fixtures."""

from tests.support.web import (  # noqa: F401 - fixtures
    client,
    make_settings,
    scripted_server,
    server,
    user_client,
)
