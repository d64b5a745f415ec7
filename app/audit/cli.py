"""`teller audit verify`: recompute the audit chain and say whether anything was changed."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from app.audit.head_log import configured_anchors, read_anchors
from app.audit.verify import AnchorError, parse_anchor, verify_chain
from app.cli_common import CliError, open_session
from app.config import Settings


def audit_verify(args: argparse.Namespace, settings: Settings) -> str:
    """Prints the head when intact. The anchors checked: `--anchor ID:HASH` (a head noted
    earlier), `--anchor-file FILE` (a head log shipped elsewhere) and TELLER_AUDIT_HEAD_LOG
    when set; together they show a log rebuilt, cut at its end, or cut outside retention."""
    try:
        anchors = [parse_anchor(text) for text in args.anchor or []]
        for path in args.anchor_file or []:
            anchors += read_anchors(Path(path))
        anchors += configured_anchors(settings)
    except AnchorError as exc:
        raise CliError(str(exc)) from None
    with open_session(settings) as session:
        report = verify_chain(
            session=session, retention_days=settings.audit_retention_days, anchors=anchors
        )
    if not report.ok:
        more = f" (+{len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise CliError(f"audit chain broken: {report.problems[0]}{more}")
    matched = f", {report.anchors} anchors matched" if report.anchors else ""
    return (
        f"audit chain intact: {report.checked} records{matched}, "
        f"head {report.head_id}:{report.head_hash}"
    )


def add_parser(commands: argparse._SubParsersAction, runner: Callable) -> None:
    audit = commands.add_parser("audit", help="check the audit trail")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = actions.add_parser("verify", help="check that no audit record was edited or deleted")
    verify.add_argument(
        "--anchor",
        metavar="ID:HASH",
        action="append",
        help="also check a head printed by an earlier verify (repeatable)",
    )
    verify.add_argument(
        "--anchor-file",
        metavar="FILE",
        action="append",
        help="also check every head in FILE: a copy of TELLER_AUDIT_HEAD_LOG, or a JSON log "
        "with 'audit head' lines (repeatable)",
    )
    verify.set_defaults(run=runner(audit_verify))
