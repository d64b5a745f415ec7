"""`/login/oidc` (go to the provider) and `/login/oidc/callback` (come back signed in).

Thin: the flow's rules are in `app.auth.oidc`, the account's in `app.auth.identity`. Every
failure shows the sign-in page with one sentence saying what happened (and the password form
still there when local accounts or LDAP are enabled), and is audited with its provider.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import RedirectResponse

from app.audit import service as audit
from app.auth import identity, oidc
from app.auth.access import safe_next
from app.auth.router import login_context, start_session
from app.auth.service import SignInRefused
from app.auth.sessions import cookie_secure
from app.config import Settings
from app.deps import OidcDep, SessionDep, SettingsDep
from app.ops.requests import client_ip
from app.web.templating import render

router = APIRouter(prefix="/login/oidc")
COOKIE_PATH = "/login/oidc"


def _redirect_uri(request: Request, settings: Settings) -> str:
    return settings.oidc_redirect_url or str(request.url_for("oidc_callback"))


def _failed(
    request: Request, settings: Settings, message: str, *, code: int, next_url: str = "/"
) -> Response:
    extra = ""
    if code == status.HTTP_503_SERVICE_UNAVAILABLE:
        extra = (
            " Sign in with your Teller password below meanwhile."
            if settings.local_accounts or settings.ldap_url
            else " Try again later."
        )
    response = render(
        request,
        "login.html",
        login_context(settings, next_url, error=message + extra),
        status_code=code,
    )
    response.delete_cookie(oidc.COOKIE, path=COOKIE_PATH)
    return response


def _audit_failure(session: SessionDep, request: Request, reason: str) -> None:
    audit.record_event(
        session=session,
        action=audit.SIGN_IN_FAILED,
        details={"ip": client_ip(request), "provider": oidc.PROVIDER, "reason": reason},
    )


@router.get("")
def begin(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    provider: OidcDep,
    next: str = "/",  # noqa: A002
) -> Response:
    try:
        begun = provider.begin(
            session=session,
            redirect_uri=_redirect_uri(request, settings),
            next_url=safe_next(next),
        )
    except oidc.ProviderUnavailable as exc:
        _audit_failure(session, request, str(exc))
        return _failed(request, settings, str(exc), code=status.HTTP_503_SERVICE_UNAVAILABLE)
    response = RedirectResponse(begun.url, status_code=status.HTTP_303_SEE_OTHER)
    # Lax, not Strict: the provider sends the browser back with a cross-site navigation.
    response.set_cookie(
        oidc.COOKIE,
        begun.cookie,
        max_age=oidc.SIGN_IN_MINUTES * 60,
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=cookie_secure(request, settings),
    )
    return response


@router.get("/callback", name="oidc_callback")
def callback(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    provider: OidcDep,
    code: str = "",
    state: str = "",
    error: str = "",
    error_description: str = "",
) -> Response:
    if error:
        reason = f"The provider refused the sign-in: {error_description or error}."
        _audit_failure(session, request, reason)
        return _failed(request, settings, reason, code=status.HTTP_400_BAD_REQUEST)
    if not code or not state:
        reason = "The sign-in answer lacks its code or state: start the sign-in again."
        _audit_failure(session, request, reason)
        return _failed(request, settings, reason, code=status.HTTP_400_BAD_REQUEST)
    try:
        found, next_url = provider.finish(
            session=session,
            cookie=request.cookies.get(oidc.COOKIE),
            state=state[:512],
            code=code[:4096],
            redirect_uri=_redirect_uri(request, settings),
        )
        user = identity.sign_in_external(
            session=session,
            provider=oidc.PROVIDER,
            subject=found.subject,
            username=found.username,
            provider_groups=found.groups,
            admin_group=settings.oidc_admin_group,
            ip=client_ip(request),
        )
    except oidc.ProviderUnavailable as exc:
        _audit_failure(session, request, str(exc))
        return _failed(request, settings, str(exc), code=status.HTTP_503_SERVICE_UNAVAILABLE)
    except oidc.OidcError as exc:
        _audit_failure(session, request, str(exc))
        return _failed(request, settings, str(exc), code=status.HTTP_400_BAD_REQUEST)
    except SignInRefused as exc:  # audited by the identity rules
        return _failed(request, settings, str(exc), code=status.HTTP_403_FORBIDDEN)
    response = start_session(request, session, settings, user, next_url)
    response.delete_cookie(oidc.COOKIE, path=COOKIE_PATH)
    return response
