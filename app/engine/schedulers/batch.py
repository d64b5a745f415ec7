"""Continuous batching: one worker thread owns the GPU and steps every running answer at once.

A decode step of a 7B model reads all its weights whatever the batch size, so answering 32
users together costs about what answering one does. The loop:

1. run control actions (adapter loads/unloads) between steps, never during one;
2. admit waiting requests into free slots: each prompt is prefilled on its own (prefill is
   compute-bound, decode is memory-bound: mixing them would slow both) within a per-iteration
   token budget, so running answers keep streaming while a long prompt waits its turn;
3. one decode step for all running rows, each with its own adapter and sampling settings;
4. rows that finished (EOS, stop string, length, cancelled, client gone) leave at once; the
   last row moves into the hole so rows stay contiguous and decode reads one cache view.

Requests beyond `max_batch` wait in a bounded queue; when that is full `generate` raises
`EngineBusy` (the web layer answers 503 with Retry-After).

transformers 5 ships its own continuous batching (`generate_batch`, paged attention), but it
cannot give each request its own LoRA adapter, which is what Teller's per-conversation adapter
picker needs, and it does not capture bitsandbytes NF4 steps in CUDA graphs; hence this loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.contract import PromptFormat
from app.engine.generation import PreparedRequest, SequenceDecoder, eos_ids
from app.engine.loader import LoadedModel
from app.engine.models.families import BatchedForward, batched_forward
from app.engine.sampling import sample_rows
from app.engine.schedulers.decode_graphs import GraphedDecode
from app.engine.schedulers.delivery import Outbox
from app.engine.schedulers.host import SchedulerHost
from app.engine.schedulers.launched_step import LaunchedStep
from app.engine.schedulers.waiting import WaitingJobs
from app.engine.schedulers.worker import Control, Job
from app.engine.types import (
    EngineError,
    EngineInfo,
    FinishEvent,
    GenerationRequest,
    OutOfMemory,
    PrefillCounts,
)

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.001
"""How long a Python thread may hold the interpreter lock before others get a turn: the
worker thread runs Python between GPU steps, and the default 5 ms would let it keep the lock
while requests wait on the web server's loop."""

PREFILL_TOKEN_BUDGET = 4096
"""Prompt tokens prefilled per loop iteration before running rows get their next step."""


@dataclass
class _Row:
    decoder: SequenceDecoder
    adapter: str | None
    length: int
    """Tokens in this row's cache; the next decoded token goes at this position."""


class BatchEngine:
    """The batching loop, on the worker thread of a `SchedulerHost` (as the sequential one is).

    Args:
        max_batch: rows decoded together; also the KV cache's slot count.
        max_queue: requests waiting for a slot before `generate` answers busy.
        cuda_graphs: replay decode steps from CUDA graphs (None: whenever on CUDA).
        batch_prefill: prefill requests that arrive together in one padded forward (None:
            on CUDA, where one forward per prompt re-reads every weight; on CPU prefill is
            bound by arithmetic and single prompts keep results equal to transformers').
        linear_override: a faster kernel for the base projections (see `BatchedForward`).
        run_ahead: queue each decode step before the previous one's tokens reach the host
            (None: with CUDA graphs, where the device would otherwise wait on the host; on
            CPU the step is synchronous and it only checks the bookkeeping).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch: int = 32,
        max_queue: int = 64,
        max_context_tokens: int = 2048,
        cuda_graphs: bool | None = None,
        linear_override: Any = None,
        batch_prefill: bool | None = None,
        run_ahead: bool | None = None,
        base_prompt_format: PromptFormat | None = None,
    ) -> None:
        self.host = SchedulerHost(
            loaded,
            max_queue=max_queue,
            max_context_tokens=max_context_tokens,
            base_prompt_format=base_prompt_format,
            switch_interval_s=SWITCH_INTERVAL_S,
        )
        self._max_context = max_context_tokens
        self._max_batch = max_batch
        self._graphs_wanted = loaded.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self._linear_override = linear_override
        on_cuda = loaded.device.type == "cuda"
        self._batch_prefill = on_cuda if batch_prefill is None else batch_prefill
        self._waiting = WaitingJobs(self.host.worker)
        self._rows: list[_Row] = []
        self._batch: BatchedForward | None = None
        self._graphed: GraphedDecode | None = None
        self._run_ahead_wanted = run_ahead
        self._run_ahead = False
        self._ahead: LaunchedStep[_Row] | None = None
        self.steps = 0
        """Decode steps run, and how many of them were queued ahead (see `_step`)."""
        self.steps_ahead = 0
        self._prefills = PrefillCounts()
        self._eos: set[int] = set()
        self._broken = ""
        self._outbox = Outbox()
        self.ready = self.host.ready
        """Set once the weights, cache and graphs are laid out (or that failed)."""
        self.host.start(self._work, warm_up=self._warm_up, on_warm_up_failure=self._failed)

    @property
    def info(self) -> EngineInfo:
        return self.host.info

    @property
    def model(self) -> Any:
        return self.host.model

    @property
    def queue_depth(self) -> int:
        """Requests accepted but not decoding yet (being prepared or waiting for a slot)."""
        return self.host.queue_depth

    @property
    def active_streams(self) -> int:
        return self.host.active_streams

    @property
    def prefills(self) -> PrefillCounts:
        return self._prefills

    def count_tokens(self, text: str) -> int:
        return self.host.count_tokens(text)

    def prepare(self, request: GenerationRequest) -> PreparedRequest:
        """See `ServedModel.prepare`."""
        return self.host.prepare(request)

    async def load_adapter(self, name: str, path: Path, prompt_format: PromptFormat) -> None:
        """Attach a LoRA adapter between steps; the bank and graphs follow (`_run_control`)."""
        await self.host.load_adapter(name, path, prompt_format)

    async def unload_adapter(self, name: str) -> None:
        """Detach an adapter between steps; rows still using it end with an error."""
        await self.host.unload_adapter(name)

    @property
    def _ready_batch(self) -> BatchedForward:
        if self._batch is None:
            raise EngineError("the batch engine has not started")
        return self._batch

    def generate(self, request: GenerationRequest) -> Any:
        """See `SchedulerHost.open_stream`. Events wait in the outbox and reach the caller's
        event loop once per step (`delivery.Outbox`)."""
        return self.host.open_stream(request, retry_after=2, emitter=self._outbox.emitter)

    async def close(self) -> None:
        """Stop the worker (running and waiting answers end with an error event)."""
        await self.host.close()

    # ---- worker ---------------------------------------------------------------------------

    def _warm_up(self) -> None:
        """Lay out the weights and cache, and capture the common decode graphs."""
        self._batch = batched_forward(
            self.model,
            slots=self._max_batch,
            max_tokens=self._max_context,
            linear_override=self._linear_override,
        )
        self._eos = eos_ids(self.host.served.tokenizer, self.model)
        if self._graphs_wanted:
            try:
                self._graphed = GraphedDecode(self._batch, self._max_batch)
                self._graphed.warm_up()
            except Exception:  # noqa: BLE001 - eager steps give the same answers, slower
                log.exception("CUDA graph capture failed; decoding without graphs")
                self._graphed = None
        wanted = self._run_ahead_wanted
        self._run_ahead = self._graphed is not None if wanted is None else wanted

    def _failed(self, exc: Exception) -> None:
        """A failed warm-up: every request then fails with the reason."""
        log.exception("batch engine failed to start")
        self._broken = f"the model could not be prepared: {exc}"

    def _work(self) -> None:
        while True:
            try:
                running = self._iterate()
            finally:
                self._outbox.flush()
            if not running:
                return

    def _iterate(self) -> bool:
        """One turn of the loop: controls, admissions, one decode step; False on stop."""
        idle = not self._rows and not self._waiting
        taken = self._waiting.take(block=idle, run_control=self._run_control)
        if taken and idle and not self._rows:  # a burst reaching an idle engine: one prefill
            taken = self._waiting.gather(up_to=self._max_batch, run_control=self._run_control)
        if not taken:
            self._fail_all("the server is shutting down")
            return False
        if self._broken:
            self._fail_all(self._broken)
            return True
        try:
            self._admit()
            if self._rows:
                self._step()
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            log.exception("out of memory during a batch step")
            self._fail_running(OutOfMemory())
        except Exception as exc:  # noqa: BLE001 - fail these answers, keep serving
            log.exception("batch step failed")
            self._fail_running(EngineError(str(exc)))
        return True

    def _run_control(self, item: Control) -> None:
        if self._ahead is not None:
            # The step queued ahead reads the adapter factors and graphs a load or unload
            # replaces: let it finish first (its tokens stay to be read).
            self._ahead.tokens()
        item.run()
        if self._batch is not None:
            self._batch.set_adapters(self.model)
            self._recapture()
        for row in list(self._rows):
            if row.adapter is not None and row.adapter not in self.host.served.adapter_formats:
                row.decoder.finish("error", error=f"adapter {row.adapter!r} was unloaded")
        self._compact()

    def _recapture(self) -> None:
        """Capture the mixed-adapter graphs for the new adapter set now, during the load,
        rather than one bucket at a time in front of the next users' first tokens."""
        if self._graphed is None or not self.host.served.adapter_formats:
            return
        try:
            self._graphed.warm_up(modes=("lora",))
            # One user on one adapter (the default, typically): the single-row graph per
            # adapter, so the first answer after a load does not wait for a capture.
            slots = [f"one:{slot}" for slot in range(len(self._ready_batch.lora.names))]
            self._graphed.warm_up(modes=slots, sizes=(1,))
        except Exception:  # noqa: BLE001 - they are captured on first use instead
            log.exception("capturing adapter graphs failed")

    def _admit(self) -> None:
        """Prefill waiting requests into free slots, up to the token budget per iteration."""
        if self._waiting.hold_back(running=len(self._rows), free=self._max_batch - len(self._rows)):
            return
        budget = PREFILL_TOKEN_BUDGET
        starting: list[tuple[SequenceDecoder, PreparedRequest]] = []
        while self._waiting and len(self._rows) + len(starting) < self._max_batch and budget > 0:
            job = self._waiting.next()
            try:
                ready = self._prepare_job(job)
            except Exception as exc:  # noqa: BLE001 - its own sampling failed: it alone ends
                log.exception("a request could not start")
                job.emit(FinishEvent("error", "", 0, 0, error=str(exc)))
                continue
            if ready is not None:
                starting.append(ready)
                budget -= len(ready[1].prompt_ids)
        if not starting:
            return
        batch = self._ready_batch
        first = len(self._rows)
        # Rows join before their prefill runs, so a failed prefill fails them like any row.
        for decoder, prepared in starting:
            self._rows.append(_Row(decoder, prepared.adapter, len(prepared.prompt_ids)))
        batched = self._batch_prefill and len(starting) > 1
        self._prefills = self._prefills.plus(1 if batched else len(starting), len(starting))
        if batched:
            logits = batch.prefill_many(
                range(first, first + len(starting)),
                [prepared.prompt_ids for _, prepared in starting],
                [prepared.adapter for _, prepared in starting],
            )
        else:
            logits = torch.stack(
                [
                    batch.prefill(first + i, prepared.prompt_ids, prepared.adapter)
                    for i, (_, prepared) in enumerate(starting)
                ]
            )
        rows = self._rows[first:]
        chosen = LaunchedStep.start(rows, logits, self._choose(logits, rows)).tokens()
        for index, row in enumerate(rows):
            # A row that ends at its first token leaves a hole that `_compact` fills, so the
            # remaining rows and their cache slots stay aligned.
            _push(row, logits[index], chosen[index])
        self._compact()
        # First tokens go out now, not after the decode step that follows in this turn.
        self._outbox.flush()

    def _prepare_job(self, job: Job) -> tuple[SequenceDecoder, PreparedRequest] | None:
        """A waiting request ready to prefill, or None when it already ended (with its event)."""
        prepared = job.admitted()
        if prepared is None:
            return None
        decoder = self._decoder(prepared, job)
        if not decoder.wants_more:
            decoder.finish("length")
            return None
        if prepared.adapter and prepared.adapter not in self.host.served.adapter_formats:
            decoder.finish("error", error=f"adapter {prepared.adapter!r} is not loaded")
            return None
        return decoder, prepared

    def _decoder(self, prepared: PreparedRequest, job: Job) -> SequenceDecoder:
        device = self._ready_batch.device
        return SequenceDecoder(self.host.served.tokenizer, prepared, self._eos, job.emit, device)

    def _step(self) -> None:
        """One token for every running row.

        With run-ahead, the next step is queued on the device before this step's tokens are
        read: it decodes the tokens this step chose, still on the device, so the GPU goes
        from one step to the next while the host turns tokens into text and events (at
        batch 1 the host's part is about a seventh of a 7B step). A row that ends at this
        step wastes its share of the step queued ahead; that step's other rows keep theirs.
        """
        launched = self._ahead if self._ahead is not None else self._launch()
        self._ahead = self._launch_ahead(launched) if self._may_run_ahead(launched) else None
        chosen = launched.tokens()
        max_tokens = self._ready_batch.max_tokens
        for index, row in enumerate(launched.rows):
            if row.decoder.finished:  # ended while the step ran (its adapter was unloaded)
                continue
            row.length += 1
            _push(row, launched.logits[index], chosen[index])
            if row.length >= max_tokens and not row.decoder.finished:
                row.decoder.finish("length")
        self._compact()

    def _launch(self) -> LaunchedStep[_Row]:
        """Queue a step for the running rows from their last tokens on the host."""
        self.steps += 1
        rows = self._rows
        tokens = [row.decoder.last_token or 0 for row in rows]
        logits = self._decode(tokens, [row.length for row in rows], [r.adapter for r in rows])
        return LaunchedStep.start(rows, logits, self._choose(logits, rows))

    def _launch_ahead(self, launched: LaunchedStep[_Row]) -> LaunchedStep[_Row]:
        """Queue the step after `launched`, fed with its chosen tokens on the device."""
        self.steps += 1
        self.steps_ahead += 1
        rows = launched.rows
        positions = [row.length + 1 for row in rows]
        logits = self._decode(launched.chosen, positions, [row.adapter for row in rows])
        return LaunchedStep.start(rows, logits, self._choose(logits, rows))

    def _may_run_ahead(self, launched: LaunchedStep[_Row]) -> bool:
        """Whether the step after `launched` can be queued before its tokens are read.

        Not when the rows changed since it was launched (slots moved, rows joined), when a
        seeded row samples on the host from logits the next step would overwrite, when a
        row would pass the cache's end, or when every row is at its last token.
        """
        rows = launched.rows
        if not self._run_ahead or len(rows) != len(self._rows):
            return False
        if any(a is not b for a, b in zip(rows, self._rows, strict=True)):
            return False
        max_tokens = self._ready_batch.max_tokens
        if any(
            row.decoder.request.sampling.seed is not None
            or row.decoder.request.constraint is not None  # its mask needs this step's token
            or row.length + 1 >= max_tokens
            for row in rows
        ):
            return False
        return any(
            row.decoder.completion + 1 < row.decoder.request.sampling.max_new_tokens for row in rows
        )

    @staticmethod
    def _choose(logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """(B,) next tokens: argmax for greedy rows, one batched draw for sampled ones; a row
        with a grammar has its forbidden tokens masked in `logits` first."""
        for index, row in enumerate(rows):
            if row.decoder.request.constraint is not None:
                logits[index] = row.decoder.allowed(logits[index])
        chosen = logits.argmax(dim=-1)
        sampled = [
            index
            for index, row in enumerate(rows)
            if row.decoder.request.sampling.temperature > 0
            and row.decoder.request.sampling.seed is None
        ]
        if sampled:
            params = [rows[index].decoder.request.sampling for index in sampled]
            picks = torch.tensor(sampled, device=logits.device)
            chosen[picks] = sample_rows(logits[picks], params)
        return chosen

    def _decode(
        self,
        tokens: list[int] | torch.Tensor,
        positions: list[int],
        adapters: list[str | None],
    ) -> torch.Tensor:
        """Logits (B, V); `tokens` from the host or, for a step run ahead, on the device."""
        if self._graphed is not None:
            return self._graphed(tokens, positions, adapters)
        device = self._ready_batch.device
        return self._ready_batch.decode(
            torch.as_tensor(tokens, device=device),
            torch.tensor(positions, device=device),
            max(positions) + 1,
            adapters=adapters,
        )

    def _compact(self) -> None:
        """Drop finished rows; move the last live row into each hole (and its cache slot)."""
        index = 0
        while index < len(self._rows):
            if not self._rows[index].decoder.finished:
                index += 1
                continue
            last = len(self._rows) - 1
            if index != last:
                self._ready_batch.move(last, index)
                self._rows[index] = self._rows[last]
            self._rows.pop()
        if not self._rows:
            self._ahead = None  # a step run ahead for rows that all ended: nobody reads it

    def _fail_running(self, failure: EngineError) -> None:
        """End every running answer with `failure`; waiting requests keep their turn."""
        self._ahead = None
        for row in self._rows:
            row.decoder.finish("error", error=str(failure), failure=failure)
        self._rows.clear()

    def _fail_all(self, error: str) -> None:
        """End running and waiting requests alike (shutdown, an engine that cannot start)."""
        self._fail_running(EngineError(error))
        self._waiting.fail_all(error)


def _push(row: _Row, logits: torch.Tensor, chosen: int) -> None:
    """Give a row its next token: the batch's choice, or for a seeded row a draw from its own
    generator over its logits (so the same seed repeats the answer)."""
    if row.decoder.request.sampling.seed is not None:
        row.decoder.push(logits)
    else:
        row.decoder.push_token(chosen)
