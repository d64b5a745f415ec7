"""Ops tests use the web fixtures: a real app on a real uvicorn, signed-in clients."""

from __future__ import annotations

from tests.support.web import client, make_settings, server, user_client  # noqa: F401
