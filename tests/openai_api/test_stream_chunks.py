"""Text chunks rendered from the per-call template are the bytes the pydantic models give.

The reference is the rendering `/v1` used for every chunk before the template: the chunk
model, `model_dump` with the same fields left out, `json.dumps`.
"""

from __future__ import annotations

import json

import pytest

from app.openai_api.chunks import MARKER, ChatChunks, TextChunks
from app.openai_api.schemas import (
    ChatCompletionChunk,
    ChunkChoice,
    Completion,
    Delta,
    Source,
    TextChoice,
)

TEXTS = [
    "",
    " the",
    'say "hi"',
    "back\\slash / slash",
    "new\nline\ttab\r",
    "\x00\x1f\x7f controls",
    "é ü 中文 😀",
    "</script><script>alert(1)</script>",
    "\u2028\u2029",
    "\ud800 lone surrogate",
    MARKER,
    json.dumps(MARKER),
]
MODELS = ["finance", "finance@2", 'we"ird\\model', "モデル", MARKER, json.dumps(MARKER)]
SOURCE = Source(
    number=1,
    document="10-K",
    filename="10k.pdf",
    document_sha256="0" * 64,
    page=3,
    location="p. 3",
    section="Item 7",
    chunk_id=9,
    score=0.5,
    text="Revenue rose.",
)


def reference_chat(model: str, text: str, include_usage: bool) -> str:
    """A text chunk as the router rendered every chunk before (sources go on the last only)."""
    exclude = {"sources"} | (set() if include_usage else {"usage"})
    chunk = ChatCompletionChunk(
        id="chatcmpl-1",
        created=1700000000,
        model=model,
        choices=[ChunkChoice(delta=Delta(content=text))],
    )
    return f"data: {json.dumps(chunk.model_dump(exclude=exclude))}\n\n"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("sources", [None, [SOURCE]])
def test_chat_text_chunks_are_the_models_bytes(
    model: str, include_usage: bool, sources: list[Source] | None
) -> None:
    chunks = ChatChunks(
        ident="chatcmpl-1",
        created=1700000000,
        model=model,
        include_usage=include_usage,
        sources=sources,
    )
    for text in TEXTS:
        rendered = chunks.text(text)
        assert rendered == reference_chat(model, text, include_usage)
        assert rendered == chunks.chunk(Delta(content=text))
        data = json.loads(rendered.removeprefix("data: "))
        choice = data["choices"][0]
        assert choice["delta"] == {"role": None, "content": text, "tool_calls": None}
        assert choice["finish_reason"] is None and data["model"] == model
        assert ("usage" in data) == include_usage and "sources" not in data


@pytest.mark.parametrize("model", MODELS)
def test_completion_text_chunks_are_the_models_bytes(model: str) -> None:
    chunks = TextChunks(ident="cmpl-1", created=1700000000, model=model)
    for text in TEXTS:
        reference = Completion(
            id="cmpl-1",
            created=1700000000,
            model=model,
            choices=[TextChoice(text=text)],
        ).model_dump(exclude={"usage"})
        assert chunks.text(text) == f"data: {json.dumps(reference)}\n\n"
        data = json.loads(chunks.text(text).removeprefix("data: "))
        assert data["choices"][0]["text"] == text and "usage" not in data
