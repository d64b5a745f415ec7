"""The batch loop's waiting jobs: taken off the worker's queue, in arrival order, until a row
frees, and when they start: a burst arriving over a few milliseconds should share one prefill
forward. Control actions met on the queue run as they come (between steps)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import cast

from app.engine.schedulers.worker import STOP, Control, Job, Worker
from app.engine.types import FinishEvent

GATHER_QUIET_S = 0.0
"""How long an idle engine, given a request, waits for the next one before its prefill starts
(again after each that comes, `GATHER_MOST_S` in all). Calls through `/v1` reach the engine one
by one as the web server takes them in; started at once, the first runs its prefill alone, and
that forward's Python contends with the server's for the interpreter lock while the rest of
the burst comes in and waits for it. A lone request would pay this once. 0: start at once.
Off until a card measures it: on the 2-core CPU box 0.002 changed nothing either way
(bench/results/v1-request-overhead-cpu-gather.json); the A/B is `bench/serve_gpu.py --variants mma
--http-also gather2000`."""

GATHER_MOST_S = 0.02
"""The longest an idle engine gathers a burst (`GATHER_QUIET_S`)."""

ADMIT_DEFER_STEPS = 0
"""Decode steps newly arrived requests may wait while rows are decoding and more keep
arriving, so that a burst coming in waves shares one prefill forward instead of one per wave,
each pausing every row's decoding (TGI's router waits on arrivals the same way). A wave is
admitted once a step passes with no new arrival, after this many steps, or when it would fill
the batch. 0: admitted at once. Off: one H100 call measured it no better than without
(bench/results/serve-gpu-llama-defer-h100.json)."""


class WaitingJobs:
    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._jobs: deque[Job] = deque()
        self._seen = 0
        """Jobs waiting after the last turn (`hold_back` sees who arrived since)."""
        self._held = 0
        """Turns the waiting jobs have been held back so far (`ADMIT_DEFER_STEPS`)."""

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
            if not self._keep(item, run_control):
                return False

    def gather(self, *, up_to: int, run_control: Callable[[Control], None]) -> bool:
        """Take jobs while they keep arriving, each within `GATHER_QUIET_S` of the one before,
        for `GATHER_MOST_S` at most or until `up_to` wait; False once the queue says stop."""
        deadline = time.monotonic() + GATHER_MOST_S
        while len(self._jobs) < up_to:
            wait = min(GATHER_QUIET_S, deadline - time.monotonic())
            if wait <= 0:
                return True
            item = self._worker.take(block=True, timeout=wait)
            if item is None:
                return True  # a quiet moment: the burst is in
            if not self._keep(item, run_control):
                return False
        return True

    def _keep(self, item: object, run_control: Callable[[Control], None]) -> bool:
        """One item off the queue: a job waits here, a control action runs; False for STOP."""
        if item is STOP:
            return False
        if isinstance(item, Control):
            run_control(item)
        else:
            self._jobs.append(cast(Job, item))
        return True

    def hold_back(self, *, running: int, free: int) -> bool:
        """Whether this turn's waiting jobs wait one more decode step for those still arriving
        (`ADMIT_DEFER_STEPS`), with `running` rows decoding and `free` slots."""
        arriving, self._seen = len(self._jobs) > self._seen, len(self._jobs)
        if arriving and running and self._held < ADMIT_DEFER_STEPS and len(self._jobs) < free:
            self._held += 1
            return True
        self._held = 0
        return False

    def next(self) -> Job:
        """The longest-waiting job, counted as having left the queue."""
        job = self._jobs.popleft()
        self._seen = len(self._jobs)  # those left for a later turn
        self._worker.taken()
        return job

    def fail_all(self, error: str) -> None:
        """End every waiting job with `error` (shutdown, an engine that cannot start)."""
        while self._jobs:
            self._jobs.popleft().emit(FinishEvent("error", "", 0, 0, error=error))
            self._worker.taken()
