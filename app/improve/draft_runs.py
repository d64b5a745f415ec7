"""Drafting runs: the served model writes question/answer pairs from passages, one answer of
the lifecycle per passage, in a background task of the web server (the page polls its
progress; nothing waits on a request).

One run per dataset at a time. Records are stored as each passage is done, so a run that is
stopped (Stop, shutdown, a limit) keeps what it had; the run itself (its counts) lives in this
process only, and the audit trail keeps each answer and a `dataset.drafts` summary.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from app.adapters.errors import AdapterError
from app.answers.kinds import DRAFT
from app.answers.lifecycle import Answer, AnswerContext, AnswerNotRecorded
from app.answers.limits import LimitExceeded
from app.audit.service import record_event
from app.engine.types import EngineError, GenerationRequest, SamplingParams
from app.improve.datasets import DatasetError
from app.improve.drafts import (
    DRAFT_GRAMMAR,
    DRAFT_MAX_NEW_TOKENS,
    DraftPassage,
    add_pairs,
    messages_for,
    parse_reply,
)
from app.store.improve_models import DatasetVersion
from app.store.models import StopReason

log = logging.getLogger(__name__)
SUMMARY = "dataset.drafts"
MAX_PROBLEMS = 20
"""Problem lines a run keeps for the page (the counts cover every passage)."""


@dataclass
class DraftRun:
    """One request's progress, as the dataset page shows it."""

    id: int
    dataset_id: int
    version_id: int
    admin_id: int
    knowledge_base: str
    passages: list[DraftPassage]
    done: int = 0
    added: int = 0
    duplicates: int = 0
    malformed: int = 0
    failed: int = 0
    state: str = "running"
    """`running`, `finished` or `stopped` (set when the task has ended)."""
    stopping: bool = False
    """Asked to stop: no passage after the one being written."""
    note: str = ""
    problems: list[str] = field(default_factory=list)
    current: Answer | None = None
    task: asyncio.Task[None] | None = None

    @property
    def total(self) -> int:
        return len(self.passages)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def problem(self, passage: DraftPassage, what: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{passage.where} (passage {passage.chunk_id}): {what}")

    def halt(self, reason: str) -> None:
        """Start no further passage (the run ends as stopped, saying why)."""
        if self.running and not self.stopping:
            self.stopping, self.note = True, reason

    def stop(self, reason: str, why: StopReason = StopReason.USER) -> None:
        """End the run now: the passage being written stops too (its audit row says `why`)."""
        self.halt(reason)
        if self.current is not None:
            self.current.stop(why)


class DraftRuns:
    """The runs of this process (one `DraftRuns` per app, made by the lifespan)."""

    def __init__(self) -> None:
        self._runs: dict[int, DraftRun] = {}
        self._ids = itertools.count(1)

    def latest(self, dataset_id: int) -> DraftRun | None:
        return self._runs.get(dataset_id)

    def start(
        self,
        ctx: AnswerContext,
        *,
        dataset_id: int,
        version_id: int,
        admin_id: int,
        knowledge_base: str,
        passages: list[DraftPassage],
        endpoint: str,
    ) -> DraftRun:
        """Start drafting in the background.

        Raises:
            DatasetError: a run for this dataset is still going.
        """
        busy = self._runs.get(dataset_id)
        if busy is not None and busy.running:
            raise DatasetError(
                f"Drafting from {busy.knowledge_base} is still running ({busy.done} of "
                f"{busy.total} passages); wait for it or stop it.",
                409,
            )
        run = DraftRun(next(self._ids), dataset_id, version_id, admin_id, knowledge_base, passages)
        self._runs[dataset_id] = run
        run.task = asyncio.create_task(_drive(ctx, run, endpoint))
        return run

    async def close(self) -> None:
        """At shutdown: stop every run (the answer being written ends as stopped)."""
        running = [run for run in self._runs.values() if run.running]
        for run in running:
            run.stop("The server is shutting down.", StopReason.SHUTDOWN)
        tasks = [run.task for run in running if run.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)


async def _drive(ctx: AnswerContext, run: DraftRun, endpoint: str) -> None:
    try:
        for passage in run.passages:
            if run.stopping:
                break
            if await _one(ctx, run, passage, endpoint):
                run.done += 1
    except Exception as exc:  # noqa: BLE001 - the page says what happened; the log has the rest
        log.exception("drafting run %d failed", run.id)
        run.halt(f"Drafting failed: {exc}")
    finally:
        run.current = None
        run.state = "stopped" if run.stopping else "finished"
        await asyncio.to_thread(_summarise, ctx.session_factory, run)


async def _one(ctx: AnswerContext, run: DraftRun, passage: DraftPassage, endpoint: str) -> bool:
    """One passage: one answer of the lifecycle, its reply parsed, its pairs stored. False
    when the admin's limits refused the answer (the run stops, saying which limit)."""
    where = {"endpoint": endpoint}
    try:
        answer = Answer.reserve(ctx, DRAFT, user_id=run.admin_id, where=where)
    except LimitExceeded as exc:
        run.halt(exc.message)
        return False
    run.current = answer
    sampling = SamplingParams(temperature=0.0, max_new_tokens=DRAFT_MAX_NEW_TOKENS)
    request = GenerationRequest(
        messages=messages_for(passage),
        sampling=sampling,
        constraint=DRAFT_GRAMMAR if ctx.settings.engine == "local" else None,
    )
    details = {
        **where,
        "answer_id": uuid.uuid4().hex,
        "dataset_id": run.dataset_id,
        "dataset_version_id": run.version_id,
        "knowledge_base_id": passage.knowledge_base_id,
        "document_id": passage.document_id,
        "passage_id": passage.chunk_id,
        "prompt": messages_for(passage)[-1].content,
    }
    try:
        await answer.start(request, choice=None, details=details, log_prompt=details["prompt"])
        async for _ in answer.events():
            pass
    except (AdapterError, EngineError, AnswerNotRecorded) as exc:
        answer.error = answer.error or str(exc)
    finally:
        await answer.close()
        run.current = None
    if answer.status != "complete":
        run.failed += 1
        run.problem(passage, answer.error or "stopped before the reply was complete")
        return True
    parsed = parse_reply(answer.text)
    if not parsed.pairs:
        run.malformed += 1
        run.problem(passage, f"malformed reply ({parsed.problem}), skipped")
        return True
    try:
        added, dropped = await asyncio.to_thread(
            _store, ctx.session_factory, run.version_id, passage, parsed.pairs
        )
    except DatasetError as exc:
        run.halt(str(exc))
        return True
    run.added += added
    run.duplicates += dropped
    return True


def _store(
    factory: sessionmaker[Session],
    version_id: int,
    passage: DraftPassage,
    pairs: tuple[tuple[str, str], ...],
) -> tuple[int, int]:
    with factory() as session:
        version = session.get(DatasetVersion, version_id)
        if version is None:
            raise DatasetError("The dataset version is gone; nothing more is stored.")
        return add_pairs(session=session, version=version, passage=passage, pairs=pairs)


def _summarise(factory: sessionmaker[Session], run: DraftRun) -> None:
    """The run's audit row: which passages, and what came of them."""
    try:
        with factory() as session:
            record_event(
                session=session,
                action=SUMMARY,
                actor_id=run.admin_id,
                details={
                    "dataset_id": run.dataset_id,
                    "dataset_version_id": run.version_id,
                    "knowledge_base": run.knowledge_base,
                    "passage_ids": [p.chunk_id for p in run.passages[: run.done]],
                    "added": run.added,
                    "duplicates": run.duplicates,
                    "malformed": run.malformed,
                    "failed": run.failed,
                    "state": run.state,
                    "note": run.note,
                },
            )
    except Exception:  # noqa: BLE001 - a failed audit write is logged, never silent
        log.exception("could not audit drafting run %d", run.id)
