"""`/admin/users`: add accounts, disable and re-enable them, reset passwords."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request, Response, status
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from app.answers.streams import ActiveStreams
from app.auth import service
from app.deps import AdminUser, SessionDep, StreamsDep
from app.store.models import User
from app.web.templating import render

router = APIRouter(prefix="/admin/users")

NOTICES = {
    "created": "User added.",
    "disabled": "User disabled; their sessions ended.",
    "enabled": "User re-enabled.",
    "password": "Password reset; their sessions ended.",
    "password-keys": "Password reset; their sessions ended and their API keys were revoked.",
}


def _page(
    request: Request,
    session: Session,
    admin: User,
    *,
    error: str | None = None,
    notice: str | None = None,
    code: int = 200,
) -> Response:
    return render(
        request,
        "admin/users.html",
        {
            "users": service.list_users(session=session),
            "me": admin,
            "error": error,
            "notice": notice,
        },
        status_code=code,
    )


def _target(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such user.")
    return user


@router.get("")
def users_page(request: Request, session: SessionDep, admin: AdminUser, done: str = "") -> Response:
    return _page(request, session, admin, notice=NOTICES.get(done))


@router.post("")
def add_user(
    request: Request,
    session: SessionDep,
    admin: AdminUser,
    username: Annotated[str, Form(max_length=256)],
    password: Annotated[str, Form(max_length=4096)],
    role: Annotated[str, Form()] = "user",
) -> Response:
    if role not in ("user", "admin"):
        return _page(request, session, admin, error="Role must be user or admin.", code=400)
    try:
        service.create_user(
            session=session,
            username=username,
            password=password,
            admin=role == "admin",
            actor_id=admin.id,
        )
    except service.AccountError as exc:
        return _page(request, session, admin, error=str(exc), code=400)
    return RedirectResponse("/admin/users?done=created", status_code=303)


@router.post("/{user_id}/disable")
def disable_user(
    request: Request, session: SessionDep, admin: AdminUser, streams: StreamsDep, user_id: int
) -> Response:
    return _set_disabled(request, session, admin, user_id, disabled=True, streams=streams)


@router.post("/{user_id}/enable")
def enable_user(
    request: Request, session: SessionDep, admin: AdminUser, streams: StreamsDep, user_id: int
) -> Response:
    return _set_disabled(request, session, admin, user_id, disabled=False, streams=streams)


def _set_disabled(
    request: Request,
    session: Session,
    admin: User,
    user_id: int,
    *,
    disabled: bool,
    streams: ActiveStreams,
) -> Response:
    user = _target(session, user_id)
    try:
        service.set_disabled(session=session, user=user, disabled=disabled, actor_id=admin.id)
    except service.AccountError as exc:
        return _page(request, session, admin, error=str(exc), code=400)
    if disabled:
        # Their running answers end now (a CLI disable reaches them at their next checkpoint).
        streams.stop_user(user.id)
    done = "disabled" if disabled else "enabled"
    return RedirectResponse(f"/admin/users?done={done}", status_code=303)


@router.post("/{user_id}/password")
def reset_password(
    request: Request,
    session: SessionDep,
    admin: AdminUser,
    user_id: int,
    password: Annotated[str, Form(max_length=4096)],
    revoke_keys: Annotated[bool, Form()] = False,
) -> Response:
    """The form's "and revoke their API keys" box is ticked by default (a reset is often
    for a leaked password); unticked, the user's keys keep working."""
    user = _target(session, user_id)
    try:
        service.reset_password(
            session=session, user=user, new=password, revoke_keys=revoke_keys, actor_id=admin.id
        )
    except service.AccountError as exc:
        return _page(request, session, admin, error=f"{user.username}: {exc}", code=400)
    done = "password-keys" if revoke_keys else "password"
    return RedirectResponse(f"/admin/users?done={done}", status_code=303)
