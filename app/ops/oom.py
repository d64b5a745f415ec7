"""Telling a GPU out-of-memory failure apart from other generation errors.

The engine turns `torch.OutOfMemoryError` into `FinishEvent(reason="error", error="out of GPU
memory")` and keeps serving; the web layer answers such a request with 503 (try again later:
the memory is usually free once other answers end) instead of 500 (a bug or a bad request).
"""

from __future__ import annotations

OUT_OF_MEMORY = "out of GPU memory"
RETRY_AFTER_SECONDS = 10
MESSAGE = "The server ran out of GPU memory for this answer; try again shortly."


def is_out_of_memory(error: str | None) -> bool:
    return bool(error) and "out of memory" in str(error).lower().replace("gpu ", "")
