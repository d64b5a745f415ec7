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
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, Response, status
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.adapters.errors import AdapterError
from app.admin.compare_jobs import CompareJob
from app.answers.kinds import COMPARE
from app.answers.lifecycle import Answer, AnswerNotRecorded
from app.contract import ChatMessage
from app.deps import AdaptersDep, AdminUser, AnswersDep, CompareJobsDep, SettingsDep
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

SIDES = ("left", "right")


def _label(choice: str) -> str:
    return "Base model" if choice == "base" else choice


@router.post("")
def start_compare(
    request: Request,
    admin: AdminUser,
    adapters: AdaptersDep,
    jobs: CompareJobsDep,
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
    job_id = jobs.add(CompareJob(admin.id, text, left, right, time.monotonic()))
    context = {"job_id": job_id, "prompt": text, "left": _label(left), "right": _label(right)}
    return render(request, "admin/adapters_compare.html", context)


@router.get("/{job_id}/stream")
async def compare_stream(
    request: Request,
    admin: AdminUser,
    answers: AnswersDep,
    jobs: CompareJobsDep,
    settings: SettingsDep,
    job_id: str,
) -> EventSourceResponse:
    """SSE: `left`/`right` carry escaped text, `left-end`/`right-end` a status, `done` closes.

    Raises:
        LimitExceeded: the admin has fewer free generation slots than the two sides need.
    """
    job = jobs.take(job_id, admin.id)
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
    except (AdapterError, EngineError, AnswerNotRecorded) as exc:
        outcome = f"failed: {exc}"
    finally:
        await answer.close()
        events.put_nowait((side, "end", outcome))
