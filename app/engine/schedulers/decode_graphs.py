"""Decode steps replayed from CUDA graphs, one graph per (batch bucket, context bucket, mode).

A 7B decode step is hundreds of kernel launches of a few microseconds each (one stream's
profile: bench/results/profile-serve-hybrid.txt); launched one by one from Python the card
idles most of the time. Captured once into a CUDA graph, a step is one replay.
Graphs need fixed shapes and fixed memory, so:

- the running batch is padded up to a bucket (1, 2, 4, … `max_batch`); padding rows decode
  into free cache slots and are ignored;
- the attended context is rounded up to a power of two (at least 256, at most the cache);
- inputs are copied into static buffers the graph reads; the logits come back in a static
  output tensor that the next replay overwrites, so callers consume them before the next step;
- "base" graphs skip LoRA entirely (every row on the bare model); "one:SLOT" graphs add one
  adapter to every row (one user, or everyone on the default adapter), reading only its
  factors; "lora" graphs add every loaded adapter through the bank's row mask. Graphs that
  read adapter factors are dropped when the adapter set changes.

Graphs are captured lazily, the first time a key is needed. Capture runs the step with the
caller's real inputs (warm-up and capture both write the same K/V values the replay then
writes again), so capturing mid-flight never disturbs running sequences.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from app.engine.models.families import BatchedForward

MIN_CONTEXT = 256


def bucket_up(value: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `value`."""
    for bucket in buckets:
        if bucket >= value:
            return bucket
    raise ValueError(f"{value} is larger than the largest bucket {buckets[-1]}")


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, … up to and including `max_batch`."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch)


class GraphedDecode:
    """`BatchedForward.decode` through captured CUDA graphs."""

    def __init__(self, batch: BatchedForward, max_batch: int) -> None:
        if batch.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        if max_batch > batch.slots:
            raise ValueError("the batch cannot exceed the cache's slots")
        self._batch = batch
        self.batch_buckets = batch_buckets(max_batch)
        self.context_buckets = self._context_buckets(batch.max_tokens)
        device = batch.device
        self._tokens = torch.zeros(max_batch, dtype=torch.long, device=device)
        self._positions = torch.zeros(max_batch, dtype=torch.long, device=device)
        self._mask: torch.Tensor | None = None
        self._mask_version = -1
        self._graphs: dict[tuple[int, int, str], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle()

    @staticmethod
    def _context_buckets(max_tokens: int) -> tuple[int, ...]:
        sizes, size = [], MIN_CONTEXT
        while size < max_tokens:
            sizes.append(size)
            size *= 2
        return (*sizes, max_tokens)

    def __call__(
        self,
        tokens: Sequence[int] | torch.Tensor,
        positions: Sequence[int],
        adapters: Sequence[str | None],
    ) -> torch.Tensor:
        """Logits (B, V) for B running rows; valid until the next call.

        `tokens` may already be on the device (a step run ahead feeds the previous step's
        choice without a round trip through the host).
        """
        rows = len(tokens)
        size = bucket_up(rows, self.batch_buckets)
        context = bucket_up(max(positions) + 1, self.context_buckets)
        mode = self._mode(adapters)
        self._tokens.zero_()  # padding rows decode token 0 at position 0 of a free slot
        self._positions.zero_()
        self._tokens[:rows].copy_(torch.as_tensor(tokens), non_blocking=True)
        self._positions[:rows].copy_(torch.tensor(positions), non_blocking=True)
        if mode != "base":
            self._follow_bank()
        if mode == "lora" and self._mask is not None:
            self._mask.copy_(self._batch.lora.row_mask(adapters, len(self._tokens)))
        key = (size, context, mode)
        if key not in self._graphs:
            self._graphs[key] = self._capture(size, context, mode)
        graph, logits = self._graphs[key]
        graph.replay()
        return logits[:rows]

    def _mode(self, adapters: Sequence[str | None]) -> str:
        """`base` (no adapter anywhere), `one:SLOT` (every row on one adapter) or `lora`."""
        distinct = set(adapters)
        if distinct == {None}:
            return "base"
        if len(distinct) == 1:
            return f"one:{self._batch.lora.names.index(str(adapters[0]))}"  # not None here
        return "lora"

    def _follow_bank(self) -> None:
        """After an adapter load or unload, drop the graphs that read the old layout."""
        bank = self._batch.lora
        if self._mask_version != bank.version:
            self._graphs = {k: v for k, v in self._graphs.items() if k[2] == "base"}
            self._mask = bank.row_mask([], len(self._tokens))
            self._mask_version = bank.version

    def _step(self, size: int, context: int, mode: str) -> torch.Tensor:
        mask = self._mask[:size] if mode == "lora" and self._mask is not None else None
        slot = int(mode.removeprefix("one:")) if mode.startswith("one:") else None
        return self._batch.decode(
            self._tokens[:size], self._positions[:size], context, lora_mask=mask, lora_slot=slot
        )

    def _capture(
        self, size: int, context: int, mode: str
    ) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # lets lazy initialisation (handles, workspaces) happen outside
                self._step(size, context, mode)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._step(size, context, mode)
        return graph, logits

    def warm_up(self, modes: Sequence[str] = ("base",), sizes: Sequence[int] | None = None) -> None:
        """Capture the shortest-context graph of every batch bucket ahead of use.

        Runs at start and after an adapter load or unload, possibly while answers are
        running: the capture's warm-up passes write K/V at the cache's last position, which
        no running row has reached (a row writes a position before it ever reads it).
        """
        if any(mode != "base" for mode in modes):
            self._follow_bank()
        self._tokens.zero_()
        self._positions.fill_(self._batch.max_tokens - 1)
        for size in sizes or self.batch_buckets:
            for mode in modes:
                key = (size, self.context_buckets[0], mode)
                if key not in self._graphs:
                    self._graphs[key] = self._capture(*key)
