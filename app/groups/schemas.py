"""The group form as the admin page sends it, parsed into plain values."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GroupForm:
    """A group as the admin form sends it (already parsed; `clean` checks it)."""

    name: str
    description: str = ""
    external_name: str = ""
    default_adapter: str | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    adapters: tuple[str, ...] = ()
    knowledge_base_ids: tuple[int, ...] = ()
