"""The batch loop's waiting jobs: taken off the worker's queue, in arrival order, until a row
frees. Control actions met on the queue run as they come (between steps)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from app.engine.schedulers.worker import STOP, Control, Job, Worker
from app.engine.types import FinishEvent


class WaitingJobs:
    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._jobs: deque[Job] = deque()

    def __bool__(self) -> bool:
        return bool(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def take(self, *, block: bool, run_control: Callable[[Control], None]) -> bool:
        """Move queued jobs here and run control actions; False once the queue says stop.

        Args:
            block: wait for the first item (the loop has nothing else to do).
        """
        while True:
            item = self._worker.take(block=block)
            if item is None:
                return True
            block = False
            if item is STOP:
                return False
            if isinstance(item, Control):
                run_control(item)
            else:
                self._jobs.append(item)

    def next(self) -> Job:
        """The longest-waiting job, counted as having left the queue."""
        job = self._jobs.popleft()
        self._worker.taken()
        return job

    def fail_all(self, error: str) -> None:
        """End every waiting job with `error` (shutdown, an engine that cannot start)."""
        while self._jobs:
            self._jobs.popleft().emit(FinishEvent("error", "", 0, 0, error=error))
            self._worker.taken()
