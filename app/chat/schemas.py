"""Chat's input errors. Limits come from settings, so they are checked in the service."""

from __future__ import annotations


class ChatInputError(ValueError):
    """A user-fixable problem with what was sent; the message says what to change."""
