"""Fixtures of the improvement-loop tests: live servers with the tiny model or a scripted
engine."""

from tests.support.web import make_settings, scripted_server, server  # noqa: F401 - fixtures
