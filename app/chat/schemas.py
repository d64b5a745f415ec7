"""Validated chat inputs. Limits come from settings, so they are checked in the service."""

from __future__ import annotations

from pydantic import BaseModel, Field


class MessageIn(BaseModel):
    content: str


class RenameIn(BaseModel):
    title: str = Field(min_length=1, max_length=200)


class ChatInputError(ValueError):
    """A user-fixable problem with what was sent; the message says what to change."""
