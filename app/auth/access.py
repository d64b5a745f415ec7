"""Who may reach a route: the signed-in user, or a redirect / 401 that says how to get in.

Pages a person opens (GET, not HTMX, accepting HTML) are redirected to `/login` (or `/setup`
on a fresh install); HTMX fragments, SSE streams and API calls get 401, with `HX-Redirect`
so an HTMX page navigates to the sign-in form instead of swapping an error in.
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from fastapi import HTTPException, Request, status
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from sqlalchemy import exists, select
from starlette.concurrency import run_in_threadpool

from app.store.models import User


class NotSignedIn(HTTPException):
    def __init__(self) -> None:
        super().__init__(status.HTTP_401_UNAUTHORIZED, "Sign in first.")


def wants_page(request: Request) -> bool:
    return (
        request.method in ("GET", "HEAD")
        and request.headers.get("HX-Request") != "true"
        and "text/html" in request.headers.get("accept", "")
    )


def any_user(request: Request) -> bool:
    with request.app.state.session_factory() as session:
        return bool(session.scalar(select(exists().where(User.id.is_not(None)))))


def safe_next(target: str | None) -> str:
    """Only same-site paths, so `?next=` can never send someone to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def login_url(request: Request) -> str:
    """Where to sign in, with `next` = the page to come back to: the requested page, or for
    HTMX and form posts the page the person was on (a POST URL cannot be revisited)."""
    if not any_user(request) and request.app.state.settings.local_accounts:
        return "/setup"
    if wants_page(request):
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    else:
        current = urlsplit(request.headers.get("HX-Current-URL", ""))
        same_site = current.netloc == request.headers.get("host", "")
        path = current.path + (f"?{current.query}" if current.query else "") if same_site else "/"
    path = safe_next(path)
    return "/login" if path == "/" else f"/login?next={quote(path, safe='')}"


async def not_signed_in(request: Request, exc: Exception) -> Response:
    """Exception handler for `NotSignedIn` (registered in `app.main`)."""
    target = await run_in_threadpool(login_url, request)
    if wants_page(request):
        return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)
    headers = {"HX-Redirect": target} if request.headers.get("HX-Request") == "true" else {}
    if "text/html" in request.headers.get("accept", "") or headers:
        return PlainTextResponse("Sign in first.", status_code=401, headers=headers)
    return Response(
        content='{"detail":"Sign in first."}',
        status_code=401,
        media_type="application/json",
        headers=headers,
    )
