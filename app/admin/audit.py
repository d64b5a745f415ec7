"""`/admin/audit`: browse the audit trail by user, date, action and adapter; export; verify."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response, status
from fastapi.responses import RedirectResponse, StreamingResponse

from app.audit import export
from app.audit import service as audit
from app.audit.head_log import configured_anchors
from app.audit.verify import AnchorError, parse_anchor, verify_chain
from app.deps import AdminUser, SessionDep, SessionFactoryDep, SettingsDep
from app.store.models import AuditRecord
from app.web.flash import flash, take_flash
from app.web.templating import render

router = APIRouter(prefix="/admin/audit")
PAGE = "/admin/audit"
PAGE_SIZE = 100
SUMMARY_CHARS = 90


@dataclass(frozen=True)
class AuditRow:
    """A record as the page shows it: a one-line summary that opens to the formatted JSON."""

    record: AuditRecord
    summary: str
    details: str


def _row(record: AuditRecord) -> AuditRow:
    try:
        values = json.loads(record.details)
    except ValueError:
        return AuditRow(record, record.details[:SUMMARY_CHARS], record.details)
    if not isinstance(values, dict):
        return AuditRow(record, record.details[:SUMMARY_CHARS], record.details)
    parts = [f"{key}: {value}" for key, value in values.items() if value not in (None, "", [])]
    summary = " · ".join(parts)
    if len(summary) > SUMMARY_CHARS:
        summary = summary[: SUMMARY_CHARS - 1] + "…"
    pretty = json.dumps(values, indent=2, ensure_ascii=False, sort_keys=True)
    return AuditRow(record, summary or "{}", pretty)


def _filters(
    request: Request, user: str, action: str, adapter: str, since: str, until: str
) -> export.AuditFilter | Response:
    try:
        return export.AuditFilter.parse(
            user=user, action=action, adapter=adapter, since=since, until=until
        )
    except export.FilterError as exc:
        return render(
            request,
            "admin/audit.html",
            {
                "rows": [],
                "filters": export.AuditFilter(),
                "actions": [],
                "error": str(exc),
                "report": None,
            },
            status_code=400,
        )


@router.get("")
def audit_page(
    request: Request,
    session: SessionDep,
    _: AdminUser,
    user: str = "",
    action: str = "",
    adapter: str = "",
    since: str = "",
    until: str = "",
    before: int | None = None,
) -> Response:
    filters = _filters(request, user, action, adapter, since, until)
    if isinstance(filters, Response):
        return filters
    records = export.page(session=session, filters=filters, before=before, limit=PAGE_SIZE)
    verified = take_flash(request, PAGE)  # a "Verify the chain" just done
    return render(
        request,
        "admin/audit.html",
        {
            "rows": [_row(record) for record in records],
            "filters": filters,
            "actions": export.actions(session=session),
            "error": verified.get("error"),
            "report": verified.get("report"),
            "anchor": verified.get("anchor", ""),
            "next_before": records[-1].id if len(records) == PAGE_SIZE else None,
        },
    )


@router.post("/verify")
def verify(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _: AdminUser,
    anchor: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Checks the chain, the optional anchor (an `ID:HASH` noted earlier) and the heads in
    TELLER_AUDIT_HEAD_LOG, as `teller audit verify --anchor` does; the report waits for the
    page it redirects to (post/redirect/get), which keeps listing the records."""
    try:
        anchors = [parse_anchor(anchor)] if anchor.strip() else []
        anchors += configured_anchors(settings)
    except AnchorError as exc:
        flash(request, PAGE, error=str(exc), anchor=anchor)
    else:
        report = verify_chain(
            session=session, retention_days=settings.audit_retention_days, anchors=anchors
        )
        flash(request, PAGE, report=report, anchor=anchor)
    return RedirectResponse(PAGE, status_code=status.HTTP_303_SEE_OTHER)


@router.get("/export.{fmt}")
def export_records(
    request: Request,
    session_factory: SessionFactoryDep,
    session: SessionDep,
    admin: AdminUser,
    fmt: str,
    user: str = "",
    action: str = "",
    adapter: str = "",
    since: str = "",
    until: str = "",
) -> Response:
    """CSV or JSONL of the filtered records; the export itself is audited."""
    if fmt not in ("csv", "jsonl"):
        return Response("Export as .csv or .jsonl.", status_code=404, media_type="text/plain")
    filters = _filters(request, user, action, adapter, since, until)
    if isinstance(filters, Response):
        return filters
    audit.record_event(
        session=session,
        action=audit.AUDIT_EXPORTED,
        actor_id=admin.id,
        details={"format": fmt, "filters": filters.as_query()},
    )

    def body() -> Iterator[str]:
        with session_factory() as reader:
            writer = export.export_csv if fmt == "csv" else export.export_jsonl
            yield from writer(session=reader, filters=filters)

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")  # noqa: DTZ005 - a file name
    media = "text/csv" if fmt == "csv" else "application/x-ndjson"
    return StreamingResponse(
        body(),
        media_type=f"{media}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="teller-audit-{stamp}.{fmt}"'},
    )
