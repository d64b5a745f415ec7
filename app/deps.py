"""One-line dependencies, as `Annotated` aliases routes can declare.

Those that only read `app.state` are `async`: FastAPI runs a plain `def` dependency on its
thread pool, a hop per dependency per request for a dictionary lookup."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session, sessionmaker

from app.adapters.service import AdapterService
from app.admin.compare_jobs import CompareJobs
from app.answers.lifecycle import AnswerContext
from app.answers.limits import LimitExceeded, UserLimits, record_refusal
from app.answers.streams import ActiveStreams
from app.auth.access import NotSignedIn
from app.auth.oidc import OidcProvider
from app.auth.sessions import SignedIn, signed_in
from app.config import Settings
from app.knowledge.worker import KnowledgeRuntime
from app.store.models import User
from app.usage import service as usage
from app.web.csrf import verify_csrf


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session_factory(request: Request) -> sessionmaker[Session]:
    return request.app.state.session_factory


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


async def get_streams(request: Request) -> ActiveStreams:
    return request.app.state.streams


async def get_adapters(request: Request) -> AdapterService:
    return request.app.state.adapters


async def get_knowledge(request: Request) -> KnowledgeRuntime:
    """Retrieval with the server's embedder and top k (`app.knowledge.worker`)."""
    return request.app.state.knowledge


async def get_oidc(request: Request) -> OidcProvider:
    """The OpenID Connect provider the lifespan made; 404 where none is configured."""
    provider = request.app.state.oidc
    if provider is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "OpenID Connect sign-in is not set up.")
    return provider


def get_limits(request: Request) -> UserLimits:
    return request.app.state.limits


async def get_compare_jobs(request: Request) -> CompareJobs:
    return request.app.state.compare_jobs


async def get_answers(request: Request) -> AnswerContext:
    """What every answer needs (engine, adapters, limits, ...); 503 while the model loads."""
    answers = getattr(request.app.state, "answers", None)
    if answers is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "The model is still loading.")
    return answers


def require_signed_in(request: Request) -> SignedIn:
    """Raises NotSignedIn (pages redirect to /login, the rest get 401) without a valid session."""
    info = signed_in(request)
    if info is None:
        raise NotSignedIn()
    return info


def get_current_user(
    request: Request,
    info: Annotated[SignedIn, Depends(require_signed_in)],
    _csrf: Annotated[None, Depends(verify_csrf)],
    session: Annotated[Session, Depends(get_session)],
) -> User:
    """The signed-in user, attached to this request's session; CSRF checked after sign-in,
    so every route that needs a user is also protected against cross-site requests.

    Pages name the signed-in person from `request.state.viewer` (plain data, set here), which
    `app.web.templating.render` hands to every template: no template looks anyone up.
    """
    user = session.get(User, info.user_id)
    if user is None or user.disabled:
        raise NotSignedIn()
    request.state.viewer = info
    return user


def require_admin(user: Annotated[User, Depends(get_current_user)]) -> User:
    """Admin pages and admin API routes; 403 for everyone else."""
    if user.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "This page is for administrators.")
    return user


def message_allowed(request: Request, user: Annotated[User, Depends(get_current_user)]) -> None:
    """Route dependency for a chat message that will be answered: count it, or refuse it.

    Raises:
        LimitExceeded: over the user's message rate or token quota (audited; answered 429
            with Retry-After).
    """
    try:
        with request.app.state.session_factory() as session:
            usage.check_quota(session=session, user_id=user.id)  # tokens per day / month
        get_limits(request).check_message(user.id)
    except LimitExceeded as exc:
        with request.app.state.session_factory() as session:
            record_refusal(
                session=session,
                user_id=user.id,
                where={"endpoint": request.url.path},
                reason=exc.message,
            )
        raise


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
StreamsDep = Annotated[ActiveStreams, Depends(get_streams)]
AdaptersDep = Annotated[AdapterService, Depends(get_adapters)]
CompareJobsDep = Annotated[CompareJobs, Depends(get_compare_jobs)]
OidcDep = Annotated[OidcProvider, Depends(get_oidc)]
KnowledgeDep = Annotated[KnowledgeRuntime, Depends(get_knowledge)]
AnswersDep = Annotated[AnswerContext, Depends(get_answers)]
CurrentUser = Annotated[User, Depends(get_current_user)]
AdminUser = Annotated[User, Depends(require_admin)]
