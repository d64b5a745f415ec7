"""`/admin/usage`: tokens and answers by day, user, group and adapter; CSV; user quotas."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse
from markupsafe import Markup
from sqlalchemy.orm import Session

from app.auth import service as accounts
from app.deps import AdminUser, SessionDep
from app.usage import service
from app.usage.charts import stacked_bars
from app.web.templating import render

router = APIRouter(prefix="/admin/usage")
PERIODS = (7, 30, 90)
NOTICES = {"quota": "Quota saved; it applies from the user's next answer."}


def _days(days: int) -> int:
    return days if days in PERIODS else 30


def _page(
    request: Request,
    session: Session,
    days: int,
    *,
    notice: str | None = None,
    error: str | None = None,
    code: int = 200,
) -> Response:
    figures = service.summary(session=session, days=days)
    day_labels = [d.strftime("%d %b") for d in figures.by_day]
    chart = stacked_bars(
        day_labels,
        [
            ("prompt", [t.prompt_tokens for t in figures.by_day.values()]),
            ("completion", [t.completion_tokens for t in figures.by_day.values()]),
        ],
        title=f"Tokens per day, last {days} days",
    )

    def ordered(table: dict[str, service.Tally]) -> list[tuple[str, service.Tally]]:
        return sorted(table.items(), key=lambda item: (-item[1].tokens, item[0]))

    return render(
        request,
        "admin/usage.html",
        {
            "days": days,
            "periods": PERIODS,
            "figures": figures,
            "chart": Markup(chart),  # noqa: S704 - built by app.usage.charts, labels escaped
            "tables": [
                ("User", ordered(figures.by_user)),
                ("Group", ordered(figures.by_group)),
                ("Adapter", ordered(figures.by_adapter)),
                ("Surface", ordered(figures.by_surface)),
            ],
            "quotas": service.quota_table(session=session),
            "users": accounts.list_users(session=session),
            "notice": notice,
            "error": error,
        },
        status_code=code,
    )


@router.get("")
def usage_page(
    request: Request, session: SessionDep, _: AdminUser, days: int = 30, done: str = ""
) -> Response:
    return _page(request, session, _days(days), notice=NOTICES.get(done))


@router.get(".csv")
def usage_csv(session: SessionDep, _: AdminUser, days: int = 30) -> Response:
    days = _days(days)
    return Response(
        service.csv_text(session=session, days=days),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="teller-usage-{days}d.csv"'},
    )


@router.post("/quotas")
def set_quota(
    request: Request,
    session: SessionDep,
    admin: AdminUser,
    username: Annotated[str, Form(max_length=256)],
    tokens_per_day: Annotated[str, Form(max_length=40)] = "",
    tokens_per_month: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    """Set, raise or clear (both empty) one user's own quota; it applies at once."""
    user = accounts.get_user(session=session, username=username)
    try:
        if user is None:
            raise service.QuotaError(
                f"No user is named {username.strip()!r}: check the name on /admin/users."
            )
        service.set_user_quota(
            session=session,
            user=user,
            per_day=service.parse_tokens(tokens_per_day, "per day"),
            per_month=service.parse_tokens(tokens_per_month, "per month"),
            actor_id=admin.id,
        )
    except service.QuotaError as exc:
        return _page(request, session, 30, error=str(exc), code=400)
    return RedirectResponse("/admin/usage?done=quota#quotas", status_code=303)
