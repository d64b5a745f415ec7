"""Conversation → prompt token ids that fit the context budget, in bounded work.

Dropping the oldest turns one at a time and re-rendering after each drop costs one full
tokenisation per dropped turn: quadratic in the history, and a hostile request of thousands
of messages held the engine for a minute. Here every message is tokenised once to learn its
length, whole turns are dropped from a running total, and the kept conversation is rendered
and encoded a bounded number of times (`MAX_RENDERS`), whatever the history holds.

Before anything is tokenised, text that cannot fit is cut on characters alone: a token spans
at most `max_token_chars(tokenizer)` characters, so a message of more than `budget` times that
many characters already overflows the budget on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from app.contract import ChatMessage, PromptFormat, build_prompt, encode_prompt

MAX_RENDERS = 4
"""Renders of the whole kept conversation before the ids are cut to the budget from the left."""


class PreparationCancelled(Exception):  # noqa: N818 - a signal, not a failure
    """The request was cancelled while its prompt was being prepared."""


def max_token_chars(tokenizer: Any) -> int:
    """Characters the longest vocabulary entry can decode to (at least 1).

    Byte-level tokens are written with one printable character per byte, so an entry's length
    bounds the characters it produces; a small margin covers normalisers that expand text.
    """
    vocab = tokenizer.get_vocab()
    longest = max((len(token) for token in vocab), default=1)
    return max(1, longest) + 2


def fit_ids(ids: list[int], budget: int) -> list[int]:
    """The last `budget` ids: what the model can see of an over-long prompt."""
    return ids[-budget:] if len(ids) > budget else ids


def fit_completion_prompt(tokenizer: Any, prompt: str, budget: int, char_bound: int) -> list[int]:
    """Ids of a raw completion prompt, keeping its end when it is longer than the budget."""
    limit = budget * char_bound
    text = prompt[-limit:] if len(prompt) > limit else prompt
    return fit_ids(list(tokenizer(text)["input_ids"]), budget)


def fit_conversation(
    tokenizer: Any,
    messages: Sequence[ChatMessage],
    prompt_format: PromptFormat,
    budget: int,
    *,
    char_bound: int,
    cancelled: Callable[[], bool] = lambda: False,
    continue_final: bool = False,
) -> list[int]:
    """Prompt ids of `messages`, dropping the oldest turns until they fit `budget` tokens.

    System messages and the last message are always kept (an over-long last message keeps its
    end). Each message is tokenised at most `MAX_RENDERS + 1` times.

    Raises:
        PreparationCancelled: `cancelled()` turned true between two tokenisations.
    """
    kept = _cut_on_characters(list(messages), budget, char_bound)
    lengths = []
    for message in kept:
        _check(cancelled)
        lengths.append(len(tokenizer(message.content, add_special_tokens=False)["input_ids"]))
    ids: list[int] = []
    for _ in range(MAX_RENDERS):
        _check(cancelled)
        text = build_prompt(kept, prompt_format, tokenizer, continue_final=continue_final)
        ids = encode_prompt(tokenizer, text, prompt_format)
        excess = len(ids) - budget
        if excess <= 0:
            return ids
        overhead = max(0, len(ids) - sum(lengths)) // max(1, len(kept))
        if not _drop_oldest(kept, lengths, excess, overhead):
            break
    return fit_ids(ids, budget)


def _check(cancelled: Callable[[], bool]) -> None:
    if cancelled():
        raise PreparationCancelled


def _droppable(messages: Sequence[ChatMessage]) -> list[int]:
    """Indexes of the turns that may go, oldest first: neither system text nor the last turn."""
    return [i for i, m in enumerate(messages[:-1]) if m.role != "system"]


def _drop_oldest(
    messages: list[ChatMessage], lengths: list[int], excess: int, overhead: int
) -> bool:
    """Remove the oldest turns whose estimated tokens cover `excess`; False if none can go."""
    doomed: list[int] = []
    freed = 0
    for index in _droppable(messages):
        if freed >= excess:
            break
        doomed.append(index)
        freed += lengths[index] + overhead
    for index in reversed(doomed):
        del messages[index]
        del lengths[index]
    return bool(doomed)


def _cut_on_characters(
    messages: list[ChatMessage], budget: int, char_bound: int
) -> list[ChatMessage]:
    """Drop turns (newest kept) and cut text that cannot fit, before tokenising anything.

    A message costs at least one token (its role marker or header) and at least one token per
    `char_bound` characters; turns whose lower bounds alone pass the budget are dropped, so
    thousands of empty messages never reach the tokenizer.
    """
    if not messages:
        return messages
    limit = budget * char_bound
    cut = [_cut_text(m, limit) for m in messages]
    cost = [max(1, -(-len(m.content) // char_bound)) for m in cut]
    used = cost[-1] + sum(c for m, c in zip(cut[:-1], cost, strict=False) if m.role == "system")
    keep = [m.role == "system" for m in cut[:-1]]
    for index in range(len(cut) - 2, -1, -1):
        if cut[index].role == "system":
            continue
        used += cost[index]
        if used > budget:
            break
        keep[index] = True
    return [m for m, k in zip(cut[:-1], keep, strict=True) if k] + [cut[-1]]


def _cut_text(message: ChatMessage, limit: int) -> ChatMessage:
    """At most `limit` characters of a message: the end of the last turn (the question is
    there), the start of system text (the instructions come first)."""
    if len(message.content) <= limit:
        return message
    text = message.content[:limit] if message.role == "system" else message.content[-limit:]
    return ChatMessage(message.role, text)
