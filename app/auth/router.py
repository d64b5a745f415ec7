"""Sign-in, sign-out, first-run setup and the account page. Thin: validate, call, render."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response, status
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from app.audit import service as audit
from app.auth import service
from app.auth.access import safe_next
from app.auth.sessions import (
    COOKIE,
    clear_session_cookie,
    create_session,
    end_session,
    forget_request_user,
    set_session_cookie,
    signed_in,
)
from app.config import Settings
from app.deps import CurrentUser, SessionDep, SettingsDep
from app.ops.requests import client_ip
from app.store.models import User
from app.web.csrf import verify_csrf
from app.web.templating import render

router = APIRouter()
CsrfChecked = Depends(verify_csrf)


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=status.HTTP_303_SEE_OTHER)


def login_context(settings: Settings, next_url: str, **values: object) -> dict[str, object]:
    """What the sign-in page shows: the password form (local accounts or LDAP), the
    provider's button, an error."""
    return {
        "next": next_url,
        "error": None,
        "password_form": settings.local_accounts or bool(settings.ldap_url),
        "oidc_name": settings.oidc_display_name if settings.oidc_issuer else None,
        **values,
    }


@router.get("/login")
def login_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    next: str = "/",  # noqa: A002
) -> Response:
    if settings.local_accounts and service.count_users(session=session) == 0:
        return _see_other("/setup")
    if signed_in(request) is not None:
        return _see_other(safe_next(next))
    return render(request, "login.html", login_context(settings, safe_next(next)))


@router.post("/login", dependencies=[CsrfChecked])
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    username: Annotated[str, Form(max_length=256)],
    password: Annotated[str, Form(max_length=4096)],
    next: Annotated[str, Form()] = "/",  # noqa: A002
) -> Response:
    context = login_context(settings, safe_next(next), username=username)
    try:
        user = service.authenticate(
            session=session,
            settings=settings,
            username=username,
            password=password,
            ip=client_ip(request),
        )
    except service.SignInThrottled as exc:
        return render(
            request,
            "login.html",
            {**context, "error": str(exc)},
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
            headers={"Retry-After": str(exc.retry_after)},
        )
    except service.SignInRefused as exc:
        return render(
            request,
            "login.html",
            {**context, "error": str(exc)},
            status_code=status.HTTP_401_UNAUTHORIZED,
        )
    return start_session(request, session, settings, user, safe_next(next))


def start_session(
    request: Request, session: Session, settings: Settings, user: User, target: str
) -> Response:
    """A fresh session id on every sign-in (no fixation); the old one, if any, ends."""
    end_session(session=session, token=request.cookies.get(COOKIE))
    token = create_session(session=session, user=user, settings=settings, request=request)
    forget_request_user(request)
    response = _see_other(target)
    set_session_cookie(response, token, request)
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep, user: CurrentUser) -> Response:
    end_session(session=session, token=request.cookies.get(COOKIE))
    audit.record_event(session=session, action=audit.SIGN_OUT, actor_id=user.id)
    response: Response = _see_other("/login")
    if request.headers.get("HX-Request") == "true":
        response = Response(status_code=204, headers={"HX-Redirect": "/login"})
    clear_session_cookie(response, request)
    return response


@router.get("/setup")
def setup_page(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    if service.count_users(session=session) > 0 or not settings.local_accounts:
        return _see_other("/login")
    return render(request, "setup.html", {"error": None, "username": ""})


@router.post("/setup", dependencies=[CsrfChecked])
def setup(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    username: Annotated[str, Form(max_length=256)],
    password: Annotated[str, Form(max_length=4096)],
    confirm: Annotated[str, Form(max_length=4096)],
) -> Response:
    """Creates the first administrator, once: later posts find a user and are refused."""
    if service.count_users(session=session) > 0 or not settings.local_accounts:
        return _see_other("/login")
    error = None
    if password != confirm:
        error = "The two passwords differ."
    else:
        try:
            user = service.create_user(
                session=session,
                username=username,
                password=password,
                admin=True,
                only_if_first=True,
            )
        except service.AccountError as exc:
            error = str(exc)
    if error:
        return render(
            request,
            "setup.html",
            {"error": error, "username": username},
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    return start_session(request, session, settings, user, "/")


NOTICES = {
    "password": "Password changed; your other sessions were signed out.",
    "password-keys": "Password changed; your other sessions were signed out and your API keys "
    "were revoked.",
}


@router.get("/account")
def account_page(request: Request, user: CurrentUser, done: str = "") -> Response:
    notice = NOTICES.get(done)
    return render(request, "account.html", {"user": user, "error": None, "notice": notice})


@router.post("/account/password")
def change_password(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    current: Annotated[str, Form(max_length=4096)],
    password: Annotated[str, Form(max_length=4096)],
    confirm: Annotated[str, Form(max_length=4096)],
    revoke_keys: Annotated[bool, Form()] = False,
) -> Response:
    """The form's "also revoke my API keys" box is ticked by default; unticked, keys stay."""
    info = signed_in(request)
    try:
        if password != confirm:
            raise service.AccountError("The two new passwords differ.")
        revoked = service.change_password(
            session=session,
            user=user,
            current=current,
            new=password,
            revoke_keys=revoke_keys,
            keep_session=info.session_id if info else None,
        )
    except service.AccountError as exc:
        return render(
            request,
            "account.html",
            {"user": user, "error": str(exc), "notice": None},
            status_code=status.HTTP_400_BAD_REQUEST,
        )
    return _see_other("/account?done=password-keys" if revoked else "/account?done=password")
