"""How much input one answer may carry, counted the same way on every surface.

Every message counts, an empty one too: the engine renders and tokenises each turn it is
given, role markers and all, so two thousand messages without text are real work even though
they hold no characters. Counting a fixed overhead per message, and bounding how many there
are, keeps the cost of preparing one prompt bounded whatever a caller sends.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.config import Settings
from app.contract import ChatMessage

MESSAGE_OVERHEAD_CHARS = 16
"""What one message costs beyond its text: about the role markers a chat template adds."""


class TooManyMessages(ValueError):
    """More messages than `max_messages`; the text says what to change."""


class InputTooLong(ValueError):
    """More input than `max_input_chars`; the text says what to change."""


def input_chars(texts: Sequence[str]) -> int:
    """The size a list of message texts counts as: each text plus the per-message overhead."""
    return sum(len(text) + MESSAGE_OVERHEAD_CHARS for text in texts)


def check_input(texts: Sequence[str], settings: Settings, *, noun: str = "messages") -> None:
    """Refuse a request whose messages are too many or too long together.

    Raises:
        TooManyMessages: more than `settings.max_messages` texts.
        InputTooLong: their `input_chars` is over `settings.max_input_chars`.
    """
    if len(texts) > settings.max_messages:
        raise TooManyMessages(
            f"The request has {len(texts):,} {noun}; the limit is {settings.max_messages:,}. "
            "Send fewer (drop the oldest turns)."
        )
    total = input_chars(texts)
    if total > settings.max_input_chars:
        text = total - MESSAGE_OVERHEAD_CHARS * len(texts)
        raise InputTooLong(
            f"The input counts {total:,} characters ({text:,} of text and "
            f"{MESSAGE_OVERHEAD_CHARS} for each of {len(texts):,} {noun}); the limit is "
            f"{settings.max_input_chars:,}. Shorten it or send fewer {noun}."
        )


def newest_turns(turns: Sequence[ChatMessage], settings: Settings) -> list[ChatMessage]:
    """The newest turns of a conversation that fit the same limits, oldest dropped first.

    A conversation grows one message at a time, each within the limit, so its history is
    trimmed rather than refused; the newest turn is always kept (it passed the check when it
    was sent). The engine trims further to its token budget.
    """
    kept: list[ChatMessage] = []
    total = 0
    for turn in reversed(turns):
        size = len(turn.content) + MESSAGE_OVERHEAD_CHARS
        if kept and (len(kept) >= settings.max_messages or total + size > settings.max_input_chars):
            break
        kept.append(turn)
        total += size
    kept.reverse()
    return kept
