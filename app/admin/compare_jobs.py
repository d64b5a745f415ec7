"""Pending adapter comparisons between the form post that starts one and the stream that runs
it (one `CompareJobs` per app, made by the lifespan and handed out by `app.deps`)."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

JOB_TTL_SECONDS = 300


@dataclass(frozen=True)
class CompareJob:
    user_id: int
    prompt: str
    left: str
    right: str
    created: float


class CompareJobs:
    """Created by the form post, consumed once by the stream; a job not streamed within
    `JOB_TTL_SECONDS` is forgotten."""

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
