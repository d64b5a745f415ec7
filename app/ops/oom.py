"""What a caller is told when the GPU ran out of memory for its answer.

The engine turns `torch.OutOfMemoryError` into a `FinishEvent` whose `failure` is
`OutOfMemory` and keeps serving; the web layer answers such a request with 503 (try again
later: the memory is usually free once other answers end) instead of 500 (a bug or a bad
request). These are the words and the wait it gives.
"""

from __future__ import annotations

RETRY_AFTER_SECONDS = 10
MESSAGE = "The server ran out of GPU memory for this answer; try again shortly."
