"""`teller audit verify`: recompute the audit chain and say whether anything was changed."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from app.audit.service import verify_chain
from app.auth.cli import CliError, open_session
from app.config import Settings


def audit_verify(args: argparse.Namespace, settings: Settings) -> str:
    """Prints the head hash when intact (note it elsewhere to pin today's log)."""
    with open_session(settings) as session:
        report = verify_chain(session=session)
    if not report.ok:
        more = f" (+{len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise CliError(f"audit chain broken: {report.problems[0]}{more}")
    return f"audit chain intact: {report.checked} records, head {report.head_id} {report.head_hash}"


def add_parser(commands: argparse._SubParsersAction, runner: Callable) -> None:
    audit = commands.add_parser("audit", help="check the audit trail")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = actions.add_parser("verify", help="check that no audit record was edited or deleted")
    verify.set_defaults(run=runner(audit_verify))
