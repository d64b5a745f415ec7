"""`teller audit verify`: recompute the audit chain and say whether anything was changed."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from app.audit.service import verify_chain
from app.auth.cli import CliError, open_session
from app.config import Settings
from app.store.models import AuditRecord


def audit_verify(args: argparse.Namespace, settings: Settings) -> str:
    """Prints the head hash when intact: noted somewhere else (a ticket, another system), it
    pins today's log, so `--anchor ID:HASH` later proves the chain was not rebuilt since."""
    with open_session(settings) as session:
        report = verify_chain(session=session)
        if args.anchor:
            anchor_id, _, anchor_hash = args.anchor.partition(":")
            if not anchor_id.isdigit() or len(anchor_hash) != 64:
                raise CliError("--anchor takes ID:HASH as printed by an earlier verify")
            record = session.get(AuditRecord, int(anchor_id))
            if record is None:
                report.problems.insert(
                    0, f"anchored record {anchor_id} is gone (deleted, or purged by retention)"
                )
            elif record.hash != anchor_hash.lower():
                report.problems.insert(
                    0, f"record {anchor_id} no longer has the anchored hash: the log was rewritten"
                )
    if not report.ok:
        more = f" (+{len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise CliError(f"audit chain broken: {report.problems[0]}{more}")
    return f"audit chain intact: {report.checked} records, head {report.head_id}:{report.head_hash}"


def add_parser(commands: argparse._SubParsersAction, runner: Callable) -> None:
    audit = commands.add_parser("audit", help="check the audit trail")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = actions.add_parser("verify", help="check that no audit record was edited or deleted")
    verify.add_argument(
        "--anchor", metavar="ID:HASH", help="also check a head printed by an earlier verify"
    )
    verify.set_defaults(run=runner(audit_verify))
