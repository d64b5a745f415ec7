"""Incremental detokenization that never emits half a UTF-8 character.

Byte-level BPE splits one character (an emoji, "€", CJK) over several tokens; decoding each
token alone prints `�`. We decode a small window of recent tokens and hold text back while it
ends in the replacement character, the way TGI's `decode_token` does.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed token ids one at a time; get back only the new, complete text."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int] | None = None) -> None:
        self._tokenizer = tokenizer
        # A few prompt tokens of context let the tokenizer place leading spaces correctly.
        self._ids: list[int] = list(prompt_ids[-4:]) if prompt_ids else []
        self._prefix_offset = 0
        self._read_offset = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is unfinished)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            delta = new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end of generation (possibly a lone `�`)."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :].rstrip(REPLACEMENT)
