"""Wire shapes of the improvement loop: feedback on a `/v1` answer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.improve.feedback import MAX_TEXT


class ApiFeedbackRequest(BaseModel):
    """`POST /v1/feedback`: the `x-teller-call-id` of a finished answer and the verdict."""

    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(min_length=1, max_length=64)
    rating: Literal["up", "down"]
    comment: str = Field("", max_length=MAX_TEXT)
    correction: str = Field("", max_length=MAX_TEXT)
    """The answer as it should have been (kept as the correction when it differs)."""


class ApiFeedback(BaseModel):
    object: Literal["feedback"] = "feedback"
    id: int
    call_id: str
    message_id: int
    """The answer as stored in the caller's conversations (`API: <question>`)."""
    rating: Literal["up", "down"]
    has_correction: bool
