"""A decode step queued on the device, with its chosen tokens on their way to the host.

Splitting "launch" from "read the tokens" is what lets the batch loop queue the next step
before it waits for this one (run-ahead): the device then goes from one step straight to the
next while the host turns this step's tokens into text and events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

RowT = TypeVar("RowT")


@dataclass
class LaunchedStep(Generic[RowT]):
    """One step's rows (in slot order), its logits and chosen tokens (B,) on the device.

    `logits` may be a CUDA graph's static output: valid only until the next step runs.
    """

    rows: list[RowT]
    logits: torch.Tensor
    chosen: torch.Tensor
    _host: torch.Tensor
    _ready: torch.cuda.Event | None

    @classmethod
    def start(
        cls, rows: Sequence[RowT], logits: torch.Tensor, chosen: torch.Tensor
    ) -> LaunchedStep[RowT]:
        """Queue the copy of `chosen` to the host behind the step (no waiting here)."""
        if chosen.device.type != "cuda":
            return cls(list(rows), logits, chosen, chosen, None)
        host = chosen.to("cpu", non_blocking=True)  # pinned: a true asynchronous copy
        ready = torch.cuda.Event()
        ready.record()
        return cls(list(rows), logits, chosen, host, ready)

    def tokens(self) -> list[int]:
        """The chosen tokens, waiting for this step only (not for one queued after it).

        An event wait releases the interpreter lock, where `.tolist()` on a CUDA tensor would
        hold it for the whole step and stall the web server's event loop.
        """
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.tolist()
