"""The `data:` lines of one streamed `/v1` call, rendered fast where it counts: per token.

A streamed answer sends one chunk per piece of text, and the engine's worker thread needs the
interpreter lock while the event loop writes them: building pydantic models, dumping them and
encoding the dict for every token cost the loop tens of microseconds each. Each call renders
its text chunk once through the pydantic models (the reference) with a marker as the text,
splits it around the marker, and then writes every text chunk as head + JSON string + tail —
the same bytes `json.dumps(model.model_dump())` gives (tests/openai_api/test_stream_chunks.py).
The first, last and usage chunks, sent once per call, still go through the models.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any

from pydantic import BaseModel

from app.openai_api.schemas import (
    ChatCompletionChunk,
    ChunkChoice,
    Completion,
    Delta,
    Source,
    TextChoice,
    Usage,
)

DONE = "data: [DONE]\n\n"
MARKER = "\x00teller-text\x00"
"""Stands for the text while the template is rendered; found exactly once or not used."""


def sse(payload: BaseModel | dict[str, Any]) -> str:
    """One `data:` event with `payload` as JSON."""
    data = (
        payload.model_dump_json(exclude_none=False)
        if isinstance(payload, BaseModel)
        else json.dumps(payload)
    )
    return f"data: {data}\n\n"


class _Template:
    """A chunk rendered with the marker as its text, cut around it. When its fixed parts hold
    the marker too (the model name is the caller's), it is not cut: `usable` is False and the
    caller renders through the models."""

    def __init__(self, rendered: str) -> None:
        marker = json.dumps(MARKER)
        parts = rendered.split(marker)
        self.usable = len(parts) == 2
        self.head, self.tail = (parts[0], parts[1]) if self.usable else ("", "")

    def render(self, text: str) -> str:
        # What json.dumps writes for a str, inside the chunk's dict or alone: its default
        # encoder's `encode_basestring_ascii`, called here without the two frames around it.
        return self.head + encode_basestring_ascii(text) + self.tail


class ChatChunks:
    """The chunks of one streamed chat completion (`chat.completion.chunk`).

    Args:
        include_usage: the client asked for a usage chunk (`stream_options`); other chunks
            then carry `"usage": null`, as OpenAI's do.
        sources: the passages given with `knowledge_bases` (None: no `sources` key at all);
            they go on the last chunk before `[DONE]`.
    """

    def __init__(
        self,
        *,
        ident: str,
        created: int,
        model: str,
        include_usage: bool,
        sources: list[Source] | None,
    ) -> None:
        self.ident, self.created, self.model = ident, created, model
        self.include_usage, self.sources = include_usage, sources
        self._no_sources = {"sources"} if sources is None else set()
        self._text = _Template(self.chunk(Delta(content=MARKER)))

    def chunk(self, delta: Delta, finish_reason: str | None = None, *, last: bool = False) -> str:
        """Any chunk, through the models; the `last` one before `[DONE]` carries the sources."""
        exclude = (set() if self.include_usage else {"usage"}) | (set() if last else {"sources"})
        return sse(
            ChatCompletionChunk(
                id=self.ident,
                created=self.created,
                model=self.model,
                choices=[ChunkChoice(delta=delta, finish_reason=finish_reason)],
                sources=self.sources if last else None,
            ).model_dump(exclude=exclude | self._no_sources)
        )

    def text(self, text: str) -> str:
        """A chunk of answer text: `chunk(Delta(content=text))`, without the models."""
        if self._text.usable:
            return self._text.render(text)
        return self.chunk(Delta(content=text))

    def usage(self, usage: Usage) -> str:
        """The usage chunk (no choices) after the finish chunk, with the sources."""
        return sse(
            ChatCompletionChunk(
                id=self.ident,
                created=self.created,
                model=self.model,
                choices=[],
                usage=usage,
                sources=self.sources,
            ).model_dump(exclude=self._no_sources)
        )


class TextChunks:
    """The chunks of one streamed text completion (`text_completion`)."""

    def __init__(self, *, ident: str, created: int, model: str) -> None:
        self.ident, self.created, self.model = ident, created, model
        self._text = _Template(self.chunk(MARKER))

    def chunk(self, text: str, finish_reason: str | None = None) -> str:
        """Any chunk with a choice, through the models."""
        return sse(
            Completion(
                id=self.ident,
                created=self.created,
                model=self.model,
                choices=[TextChoice(text=text, finish_reason=finish_reason)],
            ).model_dump(exclude={"usage"})
        )

    def text(self, text: str) -> str:
        """`chunk(text)`, without the models."""
        return self._text.render(text) if self._text.usable else self.chunk(text)

    def usage(self, usage: Usage) -> str:
        return sse(
            Completion(
                id=self.ident, created=self.created, model=self.model, choices=[], usage=usage
            )
        )
