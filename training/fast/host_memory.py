"""Freed activations go back to the operating system during CPU training (glibc only).

A training step on CPU allocates and frees gigabytes of tensors of a few sizes (4 x 512 x 576
floats is 4.7 MB, the MLP's 4 x 512 x 1536 is 12.6 MB). glibc serves such blocks from its
heap once its adaptive mmap threshold has risen past them (it does after the first free of a
large block), and memory freed inside a heap is kept, not returned: holes that the next,
differently sized block does not fit. Measured on SmolLM2-135M with gradient checkpointing,
a step's resident memory came to 3.8 GB where its tensors never held more than 1.5 GB at once.

A fixed threshold turns the adaptation off: every block from `MMAP_THRESHOLD_BYTES` up gets
its own mapping, and freeing it unmaps it at once, so the process's resident memory follows
what its tensors hold. The cost is fresh (zeroed) pages for each such block.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
"""glibc's `mallopt` parameter number (malloc.h)."""
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
"""Blocks from 4 MiB up (activations of a 512-token row and larger) are mapped on their own."""


def return_freed_tensors_to_the_os(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold for this process; False where that is not possible.

    Process-wide and lasting: call it in a process that trains (the `teller train` worker), not
    in the server. Other C libraries (musl, macOS, Windows) have no such threshold to set.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
