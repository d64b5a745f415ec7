"""Errors the registry raises; each message says exactly what is wrong and what to do."""

from __future__ import annotations


class AdapterError(ValueError):
    """A refused package or request; the message is shown to the admin as it is."""


class AdapterNotFound(AdapterError):
    """The named adapter or version is not in the store."""


class AdapterConflict(AdapterError):
    """The request is valid but the store's state forbids it (e.g. removing the default)."""
