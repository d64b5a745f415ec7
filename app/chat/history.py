"""The sidebar: clean conversation titles, conversations grouped by date, search results.

Titles are plain text (no Markdown, no HTML), short, from the first question; a rename
replaces them for good. Dates are grouped in the reader's own time zone (the page tells it in
a cookie; UTC until it has), as assistants people know do: Today, Yesterday, Previous 7 days,
Previous 30 days, then one group per month.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import nh3
from fastapi import Request

from app.store.crud import SearchHit
from app.store.models import Conversation
from app.web.markdown import render_markdown

TITLE_CHARS = 48
"""A title longer than this is cut at a word and ends with an ellipsis."""
DEFAULT_TITLE = "New chat"
TZ_COOKIE = "teller_tz"
SNIPPET_CHARS = 120
_SPACE = re.compile(r"\s+")
_FENCE = re.compile(r"^\s*(```|~~~)")


def plain_text(text: str) -> str:
    """Markdown or HTML as the words a reader sees: tags (with a script's or style's content)
    and Markdown marks dropped, entities decoded, whitespace folded."""
    without_tags = html.unescape(nh3.clean(text, tags=set()))
    rendered = nh3.clean(render_markdown(without_tags), tags=set())
    return _SPACE.sub(" ", html.unescape(rendered)).strip()


def shorten(text: str, limit: int) -> str:
    """`text` cut at a word boundary to at most `limit` characters (an ellipsis says so)."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,.;:-") + "…"


def title_from(question: str) -> str:
    """A short plain-text title for a conversation that starts with `question`: its first
    line with words in it (code fences skipped)."""
    for line in question.splitlines():
        if _FENCE.match(line):
            continue
        if line.lstrip().startswith("|"):  # a table row: its cells' words
            line = line.replace("|", " ")
        words = plain_text(line)
        if words:
            return shorten(words, TITLE_CHARS)
    return shorten(plain_text(question), TITLE_CHARS) or DEFAULT_TITLE


def reader_zone(request: Request) -> ZoneInfo:
    """The reader's time zone from the page's cookie (an IANA name), or UTC."""
    name = request.cookies.get(TZ_COOKIE, "")
    if name and len(name) <= 64:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo("UTC")


def local_day(moment: datetime, zone: ZoneInfo) -> date:
    """The reader's calendar day of a stored (naive UTC) time."""
    return moment.replace(tzinfo=UTC).astimezone(zone).date()


def date_label(day: date, today: date) -> str:
    """The sidebar group a day falls in, seen from `today`."""
    age = (today - day).days
    if age <= 0:
        return "Today"
    if age == 1:
        return "Yesterday"
    if age <= 7:
        return "Previous 7 days"
    if age <= 30:
        return "Previous 30 days"
    return day.strftime("%B %Y")


@dataclass(frozen=True)
class DateGroup:
    label: str
    conversations: list[Conversation]


def by_date(
    conversations: Iterable[Conversation], zone: ZoneInfo, now: datetime | None = None
) -> list[DateGroup]:
    """Conversations (newest first) in date groups, in that order."""
    today = (now or datetime.now(UTC)).astimezone(zone).date()
    groups: list[DateGroup] = []
    for conversation in conversations:
        label = date_label(local_day(conversation.updated_at, zone), today)
        if not groups or groups[-1].label != label:
            groups.append(DateGroup(label, []))
        groups[-1].conversations.append(conversation)
    return groups


@dataclass(frozen=True)
class SearchResult:
    conversation_id: str
    title: str
    snippet: str
    """Plain text around the first match in a message ("" when only the title matched)."""
    day: str


def snippet(text: str, query: str, width: int = SNIPPET_CHARS) -> str:
    """Plain text around the first place `query` occurs in `text` (any case)."""
    plain = plain_text(text)
    at = plain.lower().find(query.lower())
    if at < 0:
        return shorten(plain, width)
    start = max(0, at - width // 3)
    piece = plain[start : start + width]
    return ("…" if start else "") + piece + ("…" if start + width < len(plain) else "")


def search_results(
    hits: Sequence[SearchHit], query: str, zone: ZoneInfo, now: datetime | None = None
) -> list[SearchResult]:
    today = (now or datetime.now(UTC)).astimezone(zone).date()
    return [
        SearchResult(
            conversation_id=hit.conversation_id,
            title=hit.title,
            snippet=snippet(hit.snippet_source, query) if hit.snippet_source else "",
            day=date_label(local_day(hit.updated_at, zone), today),
        )
        for hit in hits
    ]
