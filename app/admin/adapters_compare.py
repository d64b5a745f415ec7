"""`/admin/adapters/compare`: one prompt answered by two adapters (or one and the base model),
streamed side by side over one SSE connection, so an admin can judge a version before making
it the default. Both answers are greedy, so differences come from the weights alone.
"""

from __future__ import annotations

import asyncio
import html
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, Response, status
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.adapters.errors import AdapterError
from app.adapters.service import AdapterService
from app.contract import ChatMessage
from app.deps import AdaptersDep, AdminUser, EngineDep, SettingsDep
from app.engine.types import (
    Engine,
    EngineError,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
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


def _jobs(request: Request) -> dict[str, CompareJob]:
    """Pending comparisons: created by the form post, consumed once by the stream."""
    jobs = getattr(request.app.state, "compare_jobs", None)
    if jobs is None:
        jobs = request.app.state.compare_jobs = {}
    cutoff = time.monotonic() - JOB_TTL_SECONDS
    for key in [k for k, job in jobs.items() if job.created < cutoff]:
        jobs.pop(key, None)
    return jobs


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
    job_id = secrets.token_urlsafe(16)
    _jobs(request)[job_id] = CompareJob(admin.id, text, left, right, time.monotonic())
    context = {"job_id": job_id, "prompt": text, "left": _label(left), "right": _label(right)}
    return render(request, "admin/adapters_compare.html", context)


@router.get("/{job_id}/stream")
async def compare_stream(
    admin: AdminUser,
    request: Request,
    adapters: AdaptersDep,
    engine: EngineDep,
    settings: SettingsDep,
    job_id: str,
) -> EventSourceResponse:
    """SSE: `left`/`right` carry escaped text, `left-end`/`right-end` a status, `done` closes."""
    job = _jobs(request).pop(job_id, None)
    if job is None or job.user_id != admin.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "This comparison has expired; run it again.")
    messages = [ChatMessage("system", settings.system_prompt)] if settings.system_prompt else []
    messages.append(ChatMessage("user", job.prompt))
    sampling = SamplingParams(temperature=0.0, max_new_tokens=settings.max_new_tokens)
    return EventSourceResponse(
        _merged(adapters, engine, messages, sampling, job), ping=15, send_timeout=30
    )


async def _merged(
    adapters: AdapterService,
    engine: Engine,
    messages: list[ChatMessage],
    sampling: SamplingParams,
    job: CompareJob,
) -> AsyncIterator[ServerSentEvent]:
    """Run both sides at once and interleave their events as they arrive."""
    events: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
    tasks = [
        asyncio.create_task(_side(side, choice, adapters, engine, messages, sampling, events))
        for side, choice in zip(SIDES, (job.left, job.right), strict=True)
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


async def _side(
    side: str,
    choice: str,
    adapters: AdapterService,
    engine: Engine,
    messages: list[ChatMessage],
    sampling: SamplingParams,
    events: asyncio.Queue[tuple[str, str, str]],
) -> None:
    lease = None
    outcome = "failed"
    request = GenerationRequest(messages=messages, sampling=sampling)
    try:
        lease = await adapters.acquire(choice)
        request.adapter = lease.engine_name
        async for event in engine.generate(request):
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
        request.cancel.set()
        if lease is not None:
            adapters.release(lease)
        events.put_nowait((side, "end", outcome))
