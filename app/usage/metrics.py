"""Usage on `/metrics`, with bounded label sets.

Counters by surface and token kind grow as answers end. Today's figures by group and by
adapter are read from the database at scrape time, at most `MAX_SERIES` of each (the largest;
the rest add up under `other`). Users are never a label: their number has no bound; the
dashboard and its CSV export have them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
MAX_SERIES = 20
OTHER = "other"

USAGE_TOKENS = Counter(
    "teller_usage_tokens",
    "Tokens counted against quotas (prompt and completion), by surface.",
    ["surface", "kind"],
    registry=None,
)
USAGE_ANSWERS = Counter(
    "teller_usage_answers",
    "Answers whose tokens were counted, by surface.",
    ["surface"],
    registry=None,
)


def count_tokens(surface: str, prompt: int, completion: int) -> None:
    USAGE_ANSWERS.labels(surface).inc()
    USAGE_TOKENS.labels(surface, "prompt").inc(max(0, prompt))
    USAGE_TOKENS.labels(surface, "completion").inc(max(0, completion))


def bounded(figures: dict[str, float], limit: int = MAX_SERIES) -> dict[str, float]:
    """The `limit` largest entries, the rest summed under `other`."""
    ordered = sorted(figures.items(), key=lambda item: (-item[1], item[0]))
    kept = dict(ordered[:limit])
    rest = sum(value for _, value in ordered[limit:])
    if rest:
        kept[OTHER] = kept.get(OTHER, 0) + rest
    return kept


class UsageCollector(Collector):
    """Today's (UTC) tokens and answers by group and by adapter, read at scrape time."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def collect(self) -> Iterator[Any]:
        from app.usage.service import summary

        factory = getattr(self._state, "session_factory", None)
        if factory is None:
            return
        try:
            with factory() as session:
                today = summary(session=session, days=1)
        except Exception:  # noqa: BLE001 - a scrape must not fail because the database is busy
            log.exception("reading today's usage for /metrics failed")
            return
        for name, label, figures in (
            ("group", "group", today.by_group),
            ("adapter", "adapter", today.by_adapter),
        ):
            tokens = GaugeMetricFamily(
                f"teller_usage_tokens_today_by_{name}",
                f"Prompt + completion tokens used today (UTC), by {name} "
                f"(the {MAX_SERIES} largest; the rest as '{OTHER}').",
                labels=[label],
            )
            answers = GaugeMetricFamily(
                f"teller_usage_answers_today_by_{name}",
                f"Answers today (UTC), by {name} (the {MAX_SERIES} largest; the rest as "
                f"'{OTHER}').",
                labels=[label],
            )
            for key, value in bounded({k: v.tokens for k, v in figures.items()}).items():
                tokens.add_metric([key], float(value))
            for key, value in bounded({k: v.answers for k, v in figures.items()}).items():
                answers.add_metric([key], float(value))
            yield tokens
            yield answers
        users = GaugeMetricFamily(
            "teller_usage_users_today", "Users who were answered today (UTC)."
        )
        users.add_metric([], float(len(today.by_user)))
        yield users


def register(registry: Any, state: Any) -> None:
    """Add the usage counters and the scrape-time collector to an app's registry."""
    registry.register(USAGE_TOKENS)
    registry.register(USAGE_ANSWERS)
    registry.register(UsageCollector(state))
