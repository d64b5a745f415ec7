"""Jinja2 templates, and rendering one block of a page for HTMX requests.

A page and its fragments come from the same template: with `HX-Request` only the named block
is rendered, so the markup of a fragment can never drift from the full page.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app.web.calculations import answer_html
from app.web.csrf import csrf_token
from app.web.markdown import render_markdown

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"
STATIC_DIR = Path(__file__).resolve().parents[2] / "static"


def human_number(value: Any) -> str:
    """A figure as people read it: 39,530 (not 3.953e+04), 0.8125, 1.2e-05 only when tiny."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e15):
        return f"{int(value):,}"
    if not math.isfinite(value):
        return str(value)
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 0.001:
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return f"{value:.2g}"


def human_time(value: Any) -> str:
    """An ISO timestamp (or datetime, naive = UTC) as "5 Dec 2026, 14:03 UTC"."""
    moment = value
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if not isinstance(moment, datetime):
        return "" if value is None else str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return f"{moment.day} {moment:%b %Y, %H:%M} UTC"


templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.filters["markdown"] = render_markdown
templates.env.filters["answer_markdown"] = lambda text: answer_html(templates, text)
templates.env.filters["number"] = human_number
templates.env.filters["when"] = human_time
templates.env.globals["csrf_token"] = csrf_token
templates.env.globals["admin_pages"] = (
    ("/admin/adapters", "Adapters"),
    ("/admin/datasets", "Datasets"),
    ("/admin/training", "Training"),
    ("/admin/knowledge", "Knowledge"),
    ("/admin/users", "Users"),
    ("/admin/groups", "Groups"),
    ("/admin/usage", "Usage"),
    ("/admin/audit", "Audit"),
    ("/admin/status", "Status"),
)


def is_htmx(request: Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    block: str | None = None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """The whole page, or only `block` when HTMX asked for a fragment.

    Every template gets `viewer`: who is signed in (`app.auth.sessions.SignedIn`) as the
    route's user dependency found them, or None on pages that need no sign-in.
    """
    context = {"request": request, "viewer": getattr(request.state, "viewer", None), **context}
    if block and is_htmx(request):
        template = templates.get_template(name)
        html = "".join(template.blocks[block](template.new_context(context)))
        return HTMLResponse(html, status_code=status_code, headers=headers)
    return templates.TemplateResponse(
        request, name, context, status_code=status_code, headers=headers
    )


def render_fragment(request: Request, name: str, context: dict[str, Any], **kwargs: Any) -> str:
    """A partial template as a string (for SSE payloads)."""
    return templates.get_template(name).render({"request": request, **context}, **kwargs)
