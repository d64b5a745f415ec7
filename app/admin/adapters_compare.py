"""`/admin/adapters/compare`: one prompt answered by two adapters (or one and the base model),
streamed side by side over one SSE connection, so an admin can judge a version before making
it the default. Both answers are greedy, so differences come from the weights alone.

Each side is an ordinary answer of the lifecycle (`app.answers`): it takes one of the admin's
generation slots, is audited at its start and end, and stops with Stop, shutdown or a
disabled account like any other.
"""

from __future__ import annotations

import asyncio
import html
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, Response, status
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.adapters.errors import AdapterError
from app.answers.kinds import COMPARE
from app.answers.lifecycle import Answer
from app.contract import ChatMessage
from app.deps import AdaptersDep, AdminUser, AnswersDep, SettingsDep
from app.engine.types import (
    EngineError,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from app.ops.requests import client_ip
from app.web.templating import render

router = APIRouter(prefix="/compare")

JOB_TTL_SECONDS = 300
SIDES = ("left", "right")


@dataclass(frozen=True)
class CompareJob:
    user_id: int
    prompt: str
    left: str
    right: str
    created: float


class CompareJobs:
    """Pending comparisons: created by the form post, consumed once by the stream (made by
    the app's lifespan; a job not streamed within `JOB_TTL_SECONDS` is forgotten)."""

    def __init__(self) -> None:
        self._jobs: dict[str, CompareJob] = {}
        self._lock = threading.Lock()

    def add(self, job: CompareJob) -> str:
        job_id = secrets.token_urlsafe(16)
        with self._lock:
            self._expire()
            self._jobs[job_id] = job
        return job_id

    def take(self, job_id: str, user_id: int) -> CompareJob | None:
        """The job, once, and only for the admin who started it."""
        with self._lock:
            self._expire()
            job = self._jobs.get(job_id)
            if job is None or job.user_id != user_id:
                return None
            return self._jobs.pop(job_id)

    def _expire(self) -> None:
        cutoff = time.monotonic() - JOB_TTL_SECONDS
        for key in [k for k, job in self._jobs.items() if job.created < cutoff]:
            del self._jobs[key]


def _jobs(request: Request) -> CompareJobs:
    return request.app.state.compare_jobs


def _label(choice: str) -> str:
    return "Base model" if choice == "base" else choice


@router.post("")
def start_compare(
    request: Request,
    admin: AdminUser,
    adapters: AdaptersDep,
    settings: SettingsDep,
    prompt: Annotated[str, Form()],
    left: Annotated[str, Form()],
    right: Annotated[str, Form()],
) -> Response:
    text = prompt.strip()
    error = ""
    if not text:
        error = "Type a prompt to compare."
    elif len(text) > settings.max_input_chars:
        error = f"The prompt is longer than {settings.max_input_chars:,} characters."
    else:
        try:
            for choice in (left, right):
                adapters.resolve(choice)
        except AdapterError as exc:
            error = str(exc)
    if error:
        return render(
            request,
            "admin/adapters_compare.html",
            {"error": error},
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    job_id = _jobs(request).add(CompareJob(admin.id, text, left, right, time.monotonic()))
    context = {"job_id": job_id, "prompt": text, "left": _label(left), "right": _label(right)}
    return render(request, "admin/adapters_compare.html", context)


@router.get("/{job_id}/stream")
async def compare_stream(
    request: Request,
    admin: AdminUser,
    answers: AnswersDep,
    settings: SettingsDep,
    job_id: str,
) -> EventSourceResponse:
    """SSE: `left`/`right` carry escaped text, `left-end`/`right-end` a status, `done` closes.

    Raises:
        LimitExceeded: the admin has fewer free generation slots than the two sides need.
    """
    job = _jobs(request).take(job_id, admin.id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "This comparison has expired; run it again.")
    messages = [ChatMessage("system", settings.system_prompt)] if settings.system_prompt else []
    messages.append(ChatMessage("user", job.prompt))
    where = {"endpoint": request.url.path, "ip": client_ip(request)}
    sides: list[Answer] = []
    try:
        for _ in SIDES:
            sides.append(Answer.reserve(answers, COMPARE, user_id=admin.id, where=where))
    except BaseException:
        for answer in sides:
            answer.close_now()
        raise
    return EventSourceResponse(
        _merged(sides, messages, job, where, settings.max_new_tokens), ping=15, send_timeout=30
    )


async def _merged(
    sides: list[Answer],
    messages: list[ChatMessage],
    job: CompareJob,
    where: dict[str, str | None],
    max_new_tokens: int,
) -> AsyncIterator[ServerSentEvent]:
    """Run both sides at once and interleave their events as they arrive."""
    events: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
    tasks = [
        asyncio.create_task(
            _side(side, answer, choice, messages, job.prompt, where, max_new_tokens, events)
        )
        for side, answer, choice in zip(SIDES, sides, (job.left, job.right), strict=True)
    ]
    try:
        finished = 0
        while finished < len(tasks):
            side, kind, text = await events.get()
            if kind == "token":
                yield ServerSentEvent(html.escape(text), event=side)
            else:
                finished += 1
                yield ServerSentEvent(html.escape(text), event=f"{side}-end")
        yield ServerSentEvent("", event="done")
    finally:
        for task in tasks:
            task.cancel()
        for answer in sides:
            await answer.close()


async def _side(
    side: str,
    answer: Answer,
    choice: str,
    messages: list[ChatMessage],
    prompt: str,
    where: dict[str, str | None],
    max_new_tokens: int,
    events: asyncio.Queue[tuple[str, str, str]],
) -> None:
    outcome = "failed"
    sampling = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    try:
        await answer.start(
            GenerationRequest(messages=messages, sampling=sampling),
            choice=choice,
            details={**where, "answer_id": uuid.uuid4().hex, "side": side, "prompt": prompt},
            log_prompt=prompt,
        )
        async for event in answer.events():
            if isinstance(event, TokenEvent):
                await events.put((side, "token", event.text))
            elif isinstance(event, FinishEvent):
                outcome = (
                    f"{event.reason}, {event.completion_tokens} tokens"
                    if event.reason != "error"
                    else f"failed: {event.error}"
                )
    except (AdapterError, EngineError) as exc:
        outcome = f"failed: {exc}"
    finally:
        await answer.close()
        events.put_nowait((side, "end", outcome))
