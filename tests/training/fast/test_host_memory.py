"""CPU training gives freed activations back to the operating system (glibc's mmap threshold).

The pattern is a training step's in miniature: one large block freed (glibc then raises its
threshold past activation sizes), then many activation-sized tensors of which all but the
last are freed. Each case runs in a fresh process, since the setting is process-wide.
"""

from __future__ import annotations

import sys

import pytest

from tests.subprocess_python import run_python

SCRIPT = """
import sys, torch
from training.fast.host_memory import return_freed_tensors_to_the_os

def resident_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 // 1_000_000

if sys.argv[1] == "fixed":
    assert return_freed_tensors_to_the_os()
torch.ones(3 * 1024 * 1024)  # 12 MB, freed at once
start = resident_mb()
blocks = [torch.ones(1_250_000) for _ in range(100)]  # 100 x 5 MB
del blocks[:-1]
print(resident_mb() - start)
"""


def held_after_freeing_mb(mode: str) -> int:
    return int(run_python(SCRIPT, mode, timeout=120).split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_activations_leave_the_process() -> None:
    held = held_after_freeing_mb("adaptive")
    if held < 400:
        pytest.skip(f"this C library keeps {held} MB, not glibc's adaptive threshold")
    assert held_after_freeing_mb("fixed") < 50  # only the tensor still alive (5 MB)
