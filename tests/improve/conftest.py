"""Fixtures of the improvement-loop tests: live servers with a scripted engine."""

from tests.support.web import make_settings, scripted_server  # noqa: F401 - fixtures
