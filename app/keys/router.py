"""The settings page where signed-in users create and revoke their own API keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, Response, status
from fastapi.responses import RedirectResponse

from app.deps import CurrentUser, SessionDep
from app.keys import service
from app.store.models import User
from app.web.flash import flash, take_flash
from app.web.templating import render

# CurrentUser checks sign-in and, on POST, the CSRF token.
router = APIRouter(prefix="/settings/keys")


def _page(
    request: Request,
    session: SessionDep,
    user: User,
    *,
    new_secret: str = "",
    notice: str = "",
    error: str = "",
    status_code: int = 200,
) -> Response:
    base_url = str(request.base_url).rstrip("/") + "/v1"
    context = {
        "keys": service.list_keys(session=session, user_id=user.id),
        "new_secret": new_secret,
        "notice": notice,
        "error": error,
        "base_url": base_url,
    }
    response = render(request, "settings/keys.html", context, status_code=status_code)
    # The page may carry a secret: never cache it.
    response.headers["Cache-Control"] = "no-store"
    return response


PAGE = "/settings/keys"


@router.get("")
def keys_page(request: Request, session: SessionDep, user: CurrentUser, done: str = "") -> Response:
    """The list, and once after "Create key" the new key (kept on the server for this
    sign-in session, never in a URL: `app.web.flash`)."""
    notice = "Key revoked; calls with it now get 401." if done == "revoked" else ""
    made = take_flash(request, PAGE)
    return _page(request, session, user, notice=notice, new_secret=made.get("new_secret", ""))


@router.post("")
def create_key(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    name: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """Make the key, then redirect (post/redirect/get): a reload makes no second key."""
    try:
        made = service.create_key(session=session, user=user, name=name)
    except service.ApiKeyError as exc:
        return _page(request, session, user, error=str(exc), status_code=400)
    flash(request, PAGE, new_secret=made.secret)
    return RedirectResponse(PAGE, status_code=status.HTTP_303_SEE_OTHER)


@router.post("/{key_id}/revoke")
def revoke_key(session: SessionDep, user: CurrentUser, key_id: int) -> Response:
    key = service.get_key(session=session, key_id=key_id, user_id=user.id)
    if key is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such API key.")
    service.revoke_key(session=session, key=key, actor_id=user.id)
    return RedirectResponse("/settings/keys?done=revoked", status_code=status.HTTP_303_SEE_OTHER)
