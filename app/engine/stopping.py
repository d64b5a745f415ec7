"""Stop strings over streamed text.

A stop string can arrive split over several tokens ("###" then " Instruction:"), so text that
could still be the start of a stop string is held back until it either completes the stop
string (and is dropped) or turns out to be ordinary text (and is released).
"""

from __future__ import annotations


class StopStringFilter:
    def __init__(self, stop: tuple[str, ...]) -> None:
        self._stop = tuple(s for s in stop if s)
        self._held = ""
        self.matched = ""
        """The stop string that was reached ("" until one is)."""

    def push(self, text: str) -> tuple[str, bool]:
        """Add new text; return (text safe to emit, whether a stop string was reached)."""
        if not self._stop:
            return text, False
        buffer = self._held + text
        found = [(i, s) for s in self._stop if (i := buffer.find(s)) >= 0]
        cut, self.matched = min(found, default=(-1, ""))
        if cut >= 0:
            self._held = ""
            return buffer[:cut], True
        hold = self._longest_stop_prefix_suffix(buffer)
        self._held = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _longest_stop_prefix_suffix(self, buffer: str) -> int:
        """Length of the longest end of `buffer` that begins some stop string."""
        best = 0
        for stop in self._stop:
            for size in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:size]):
                    best = size
                    break
        return best
