"""Error responses as each kind of client wants them.

A browser gets a styled page with a way back; an HTMX request gets the bare sentence (the page
shows it where its form keeps errors); an API client — anything under `/v1`, or a request
that does not ask for HTML — gets JSON (`/v1`'s own errors keep OpenAI's shape:
`app.openai_api.router.openai_error_handler`).
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Request, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.ops.requests import HEADER as REQUEST_ID_HEADER
from app.ops.requests import request_id_of
from app.web.security_headers import with_headers
from app.web.templating import is_htmx, render

API_PREFIX = "/v1"
TITLES = {
    400: "Please check what you sent",
    401: "Sign in first",
    403: "Not for this account",
    404: "Not found",
    405: "Not found",
    409: "That clashes with something",
    413: "Too large",
    429: "Too many requests",
    500: "Something went wrong",
    502: "The model server did not answer",
    503: "Not ready yet",
}
DEFAULT_DETAILS = {
    "Not Found": "There is no page at this address. It may have been deleted, or the link is "
    "mistyped.",
    "Method Not Allowed": "There is no page at this address.",
}


def wants_page(request: Request) -> bool:
    """A browser navigating (not HTMX, not the API) that accepts HTML."""
    if request.url.path.startswith(API_PREFIX) or is_htmx(request):
        return False
    return "text/html" in request.headers.get("accept", "")


def error_page(
    request: Request, status_code: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The styled page: what happened, in words, and links back."""
    title = TITLES.get(status_code, "Something went wrong")
    return render(
        request,
        "error.html",
        {"status_code": status_code, "title": title, "message": message},
        status_code=status_code,
        headers=dict(headers or {}),
    )


def error_response(
    request: Request, status_code: int, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """`message` as this client wants it: a page, a sentence (HTMX) or JSON."""
    if wants_page(request):
        return error_page(request, status_code, message, headers)
    api = request.url.path.startswith(API_PREFIX)
    if not api and (is_htmx(request) or "text/html" in request.headers.get("accept", "")):
        return PlainTextResponse(message, status_code=status_code, headers=headers)
    return JSONResponse({"detail": message}, status_code=status_code, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """Registered in `app.main` for Starlette's HTTPException (404, 403, ...)."""
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for this type only
    detail = str(exc.detail)
    if wants_page(request):
        detail = DEFAULT_DETAILS.get(detail, detail)
    return error_response(request, exc.status_code, detail, exc.headers)


async def server_error(request: Request, exc: Exception) -> Response:
    """Registered in `app.main` for anything unhandled: a page or JSON, never a traceback or
    the exception's text (the server's log has both)."""
    message = (
        "The server failed on this request; nothing you typed was lost. Try again, and tell "
        "your administrator if it keeps happening."
    )
    response = error_response(request, status.HTTP_500_INTERNAL_SERVER_ERROR, message)
    # Starlette sends this from outside the app's middleware, so the security headers and the
    # request id those add to every other response are added here.
    headers = with_headers(response.raw_headers, request.scope)
    request_id = request_id_of(request.scope)
    if request_id is not None:
        headers.append((REQUEST_ID_HEADER.lower().encode("latin-1"), request_id.encode()))
    response.raw_headers = headers
    return response
