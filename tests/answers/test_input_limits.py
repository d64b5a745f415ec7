"""Input limits count every message, an empty one too, and trim a chat history to them."""

from __future__ import annotations

import pytest

from app.answers.input_limits import (
    MESSAGE_OVERHEAD_CHARS,
    InputTooLong,
    TooManyMessages,
    check_input,
    input_chars,
    newest_turns,
)
from app.config import Settings
from app.contract import ChatMessage


def settings(**values: object) -> Settings:
    return Settings(**{"max_messages": 4, "max_input_chars": 100, **values})


def test_empty_messages_count() -> None:
    assert input_chars(["", "", ""]) == 3 * MESSAGE_OVERHEAD_CHARS
    with pytest.raises(InputTooLong, match="0 of text"):
        check_input([""] * 4, settings(max_input_chars=60))


def test_more_messages_than_allowed_are_refused_whatever_their_size() -> None:
    with pytest.raises(TooManyMessages, match="5 messages; the limit is 4"):
        check_input([""] * 5, settings(max_input_chars=10_000))
    check_input(["a"] * 4, settings())


def test_a_long_history_keeps_its_newest_turns() -> None:
    turns = [ChatMessage("user" if i % 2 else "assistant", f"{i}" * 30) for i in range(10)]
    kept = newest_turns(turns, settings(max_messages=100))
    # 30 + 16 characters a turn: two fit in 100.
    assert kept == turns[-2:]
    assert newest_turns(turns, settings(max_input_chars=10_000)) == turns[-4:]


def test_the_newest_turn_is_kept_even_alone_over_the_budget() -> None:
    turns = [ChatMessage("user", "x" * 500)]
    assert newest_turns(turns, settings()) == turns
