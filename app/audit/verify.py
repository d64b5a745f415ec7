"""Checking the audit chain: every hash and link, the retention cut, and anchors kept elsewhere.

Against someone who can write to the database and nothing else, the checks prove:

- An edited, inserted, reordered or deleted record: its own hash or the next record's link
  breaks, or the chain ends before the head.
- Deleted oldest records with the head's base moved to look like a retention cut: a cut counts
  only when the newest `audit.purged` record (written by the purge, in the same transaction)
  names exactly that base, audit retention is on, and the purge kept at least as many days as
  TELLER_AUDIT_RETENTION_DAYS says.
- Not provable from the database alone, because the hash has no secret: a chain rebuilt from
  some record on with fresh hashes, a tail cut with the head moved back, or a forged purge record
  appended at the end. Anchors (ID:HASH heads exported earlier, see `app.audit.head_log`) catch
  these: an anchored record must still carry its hash and lie within the head, and may be gone
  only through a valid cut whose cut-off is later than the time the anchor was taken (an anchor
  taken at T with id N says record N+1 was written after T, so purging it at a cut-off before T
  would be impossible).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.service import AUDIT_PURGED, GENESIS, HEAD_ID, compute_hash, iter_records
from app.store.models import AuditHead, AuditRecord, utcnow

ANCHOR_RE = re.compile(r"(\d{1,18}):([0-9a-fA-F]{64})", re.ASCII)
CLOCK_SLACK = timedelta(minutes=1)
"""Tolerance for an anchor's time against a cut-off (the head is read just after the stamp)."""


class AnchorError(ValueError):
    """Text that is not an anchor; the message says which form is expected."""


@dataclass(frozen=True)
class Anchor:
    """A head seen earlier: record `id` had hash `hash` (at `at`, naive UTC, when known)."""

    id: int
    hash: str
    at: datetime | None = None

    def __str__(self) -> str:
        return f"{self.id}:{self.hash}"


def parse_anchor(text: str, *, at: datetime | None = None) -> Anchor:
    """`ID:HASH` as `teller audit verify` prints it.

    Raises:
        AnchorError: anything else.
    """
    match = ANCHOR_RE.fullmatch(text.strip())
    if match is None:
        raise AnchorError(
            f"{text.strip()[:80]!r} is not an anchor: give ID:HASH as printed by "
            "'teller audit verify' (a record id, a colon, 64 hex digits)"
        )
    return Anchor(int(match.group(1)), match.group(2).lower(), at)


@dataclass
class ChainReport:
    """What `verify_chain` found; `problems` is empty when the chain is intact."""

    checked: int = 0
    head_id: int = 0
    head_hash: str = GENESIS
    base_id: int = 0
    anchors: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Cut:
    """The newest purge record's claim, once it checks out."""

    record_id: int
    cutoff: datetime


def verify_chain(
    *,
    session: Session,
    retention_days: int,
    anchors: Sequence[Anchor] = (),
    max_problems: int = 20,
) -> ChainReport:
    """Recompute every hash and link, check the retention cut against `retention_days` (the
    TELLER_AUDIT_RETENTION_DAYS in force), then every anchor. Problems about the cut and the
    anchors come first: they are the forgeries a consistent-looking chain hides."""
    report = ChainReport()
    head = session.get(AuditHead, HEAD_ID, populate_existing=True)
    if head is None:
        report.problems.append("the audit head row is missing")
        return report
    report.head_id, report.head_hash, report.base_id = head.last_id, head.last_hash, head.base_id
    walked, purges = _walk(session, head, report)
    cut_problems, cut = _check_cut(head, purges, retention_days)
    anchor_problems = _check_anchors(session, head, anchors, cut, report)
    report.problems = (cut_problems + anchor_problems + walked)[:max_problems]
    return report


def _walk(
    session: Session, head: AuditHead, report: ChainReport
) -> tuple[list[str], list[AuditRecord]]:
    """Every record in order: hashes, links, gaps; returns the problems and the purge records
    (one per retention pass that cut something: few)."""
    problems: list[str] = []
    expected_id, expected_prev = head.base_id + 1, head.base_hash
    head_id, head_hash, base_id = head.last_id, head.last_hash, head.base_id
    purges = []
    for record in iter_records(session):
        report.checked += 1
        if record.id <= base_id:
            problems.append(f"record {record.id} is older than the retention cut at {base_id}")
            continue
        if record.id != expected_id:
            problems.append(f"records {expected_id}..{record.id - 1} are missing")
        if record.prev_hash != expected_prev:
            problems.append(f"record {record.id} does not link to the record before it")
        if compute_hash(record) != record.hash:
            problems.append(f"record {record.id} was modified after it was written")
        if record.action == AUDIT_PURGED:
            purges.append(record)
        expected_id, expected_prev = record.id + 1, record.hash
    if expected_id - 1 != head_id or expected_prev != head_hash:
        problems.append(
            f"the chain ends at record {expected_id - 1} but the head says {head_id}: "
            "the newest records were deleted or altered"
        )
    return problems, purges


def _purge_claim(record: AuditRecord) -> tuple[int, str, datetime, int] | None:
    """(base_id, base_hash, cutoff, retention_days) from a purge record, or None if unreadable."""
    try:
        details = json.loads(record.details)
        claim = (
            int(details["base_id"]),
            str(details["base_hash"]),
            datetime.fromisoformat(details["cutoff"]),
            int(details["retention_days"]),
        )
    except (ValueError, TypeError, KeyError):
        return None
    if claim[2].tzinfo is not None:  # written naive UTC; anything else was not written by Teller
        return None
    return claim


def _check_cut(
    head: AuditHead, purges: list[AuditRecord], retention_days: int
) -> tuple[list[str], _Cut | None]:
    """A missing start of the chain is a retention cut only if the newest purge record proves
    it. The cut-off returned bounds every purged record's time: the latest of the purge records
    still in the chain (an earlier one can be later when retention was lengthened since; those
    cut away were written before the cut-off of the purge that removed them)."""
    purge = purges[-1] if purges else None
    if head.base_id == 0:
        if head.base_hash != GENESIS:
            return ["the head says the chain starts at record 1 but not at the genesis hash"], None
        claim = _purge_claim(purge) if purge is not None else None
        if purge is not None and claim is not None and claim[0] != 0:
            return [
                f"{AUDIT_PURGED} record {purge.id} cut the chain after record {claim[0]}, but "
                "the head says it starts at record 1: the head's cut point was moved"
            ], None
        return [], None
    gone = f"records 1..{head.base_id} are gone"
    if purge is None:
        return [
            f"{gone} (the head says a retention cut), but no {AUDIT_PURGED} record in the chain "
            "names that cut: the oldest records were deleted outside retention"
        ], None
    claim = _purge_claim(purge)
    if claim is None:
        return [f"{AUDIT_PURGED} record {purge.id} does not say where it cut the chain"], None
    base_id, base_hash, cutoff, days = claim
    problems = []
    if (base_id, base_hash) != (head.base_id, head.base_hash):
        problems.append(
            f"the chain starts after record {head.base_id}, but the newest {AUDIT_PURGED} record "
            f"({purge.id}) cut it after record {base_id}: the head's cut point was moved"
        )
    if retention_days == 0:
        problems.append(
            f"{gone}, but audit retention is off (TELLER_AUDIT_RETENTION_DAYS=0), so nothing may "
            "cut the chain (if retention was on when they were purged, verify with that setting)"
        )
    elif days < retention_days:
        problems.append(
            f"{AUDIT_PURGED} record {purge.id} kept only {days} days of records but "
            f"TELLER_AUDIT_RETENTION_DAYS is {retention_days}: records too young were cut (if "
            "the setting was raised since, verify with the old value until a purge runs at it)"
        )
    if days < 1 or cutoff > purge.created_at - timedelta(days=days):
        problems.append(
            f"{AUDIT_PURGED} record {purge.id} names a cut-off ({cutoff}) later than its own "
            f"time less {days} days: records too young were cut"
        )
    if purge.created_at > utcnow() + CLOCK_SLACK:
        problems.append(f"{AUDIT_PURGED} record {purge.id} is dated in the future")
    if problems:
        return problems, None
    for earlier in purges[:-1]:
        other = _purge_claim(earlier)
        if other and other[2] > cutoff and other[2] <= earlier.created_at - timedelta(other[3]):
            purge, cutoff = earlier, other[2]
    return [], _Cut(purge.id, cutoff)


def _recorded_hashes(session: Session, ids: Iterable[int]) -> dict[int, str]:
    wanted = sorted(set(ids))
    found: dict[int, str] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        rows = session.execute(
            select(AuditRecord.id, AuditRecord.hash).where(AuditRecord.id.in_(chunk))
        )
        found.update({row.id: row.hash for row in rows})
    return found


def _check_anchors(
    session: Session,
    head: AuditHead,
    anchors: Sequence[Anchor],
    cut: _Cut | None,
    report: ChainReport,
) -> list[str]:
    """Each anchor against the chain as it is now (see the module docstring)."""
    latest: dict[tuple[int, str], Anchor] = {}
    for anchor in anchors:
        seen = latest.get((anchor.id, anchor.hash))
        if seen is None or (anchor.at and (seen.at is None or anchor.at > seen.at)):
            latest[(anchor.id, anchor.hash)] = anchor
    report.anchors = len(anchors)
    recorded = _recorded_hashes(session, (a.id for a in latest.values() if a.id > head.base_id))
    problems: list[str] = []
    for anchor in sorted(latest.values(), key=lambda a: a.id):
        if anchor.id > head.last_id:
            problems.append(
                f"anchored record {anchor.id} is past the head at record {head.last_id}: the "
                "newest records were deleted and the head moved back"
            )
        elif anchor.id > head.base_id:
            if anchor.id not in recorded:
                problems.append(f"anchored record {anchor.id} is gone")
            elif recorded[anchor.id] != anchor.hash:
                problems.append(
                    f"record {anchor.id} no longer has the anchored hash: the log was rewritten"
                )
        elif anchor.id == head.base_id:
            if anchor.hash != head.base_hash:
                problems.append(
                    f"the chain starts after record {anchor.id}, which had another hash when "
                    "anchored: the log was rewritten"
                )
        elif cut is None:
            problems.append(
                f"anchored record {anchor.id} was cut without a valid {AUDIT_PURGED} record"
            )
        elif anchor.at is not None and anchor.at - CLOCK_SLACK >= cut.cutoff:
            problems.append(
                f"records written after anchor {anchor.id} was taken ({anchor.at:%Y-%m-%d %H:%M}) "
                f"were cut, but {AUDIT_PURGED} record {cut.record_id} purged only records older "
                f"than {cut.cutoff:%Y-%m-%d %H:%M}: the cut was not retention's"
            )
    return problems
