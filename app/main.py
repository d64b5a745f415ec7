"""The FastAPI application: lifespan (database, engine), middleware and routers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.adapters.service import start_adapter_service, stop_adapter_service
from app.admin.compare_jobs import CompareJobs
from app.admin.router import router as admin_router
from app.answers.lifecycle import AnswerContext
from app.answers.limits import LimitExceeded, UserLimits
from app.answers.recovery import recover_interrupted
from app.answers.streams import ActiveStreams
from app.audit.head_log import export_now, head_export_loop
from app.audit.retention import retention_loop
from app.auth.access import NotSignedIn, not_signed_in
from app.auth.oidc import OidcProvider
from app.auth.oidc_router import router as oidc_router
from app.auth.router import router as auth_router
from app.chat.router import router as chat_router
from app.chat.service import wait_for_streams
from app.config import Settings
from app.engine.factory import build_engine
from app.improve.draft_runs import DraftRuns
from app.improve.jobs import JobRunner
from app.improve.router import router as improve_router
from app.keys.router import router as keys_router
from app.knowledge.router import UPLOAD_PATH as KNOWLEDGE_UPLOAD_PATH
from app.knowledge.worker import start_knowledge, stop_knowledge
from app.openai_api.router import openai_error_handler
from app.openai_api.router import router as openai_router
from app.openai_api.schemas import OpenAIError
from app.ops.body_limit import UPLOAD_SLACK_BYTES, BodyLimitMiddleware
from app.ops.metrics import registry_for
from app.ops.requests import RequestContextMiddleware
from app.ops.router import router as ops_router
from app.store.db import make_engine, make_session_factory, migrate
from app.usage import metrics as usage_metrics
from app.web import errors
from app.web.router import router as web_router
from app.web.security_headers import SecurityHeadersMiddleware
from app.web.templating import STATIC_DIR, is_htmx

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    database = make_engine(settings.resolved_database_url)
    migrate(database)
    app.state.database = database
    app.state.session_factory = make_session_factory(database)
    with app.state.session_factory() as session:
        recover_interrupted(session=session)  # what a crash left open: audited, marked stopped
    app.state.streams = ActiveStreams()
    app.state.limits = UserLimits(settings.messages_per_minute, settings.max_concurrent_streams)
    app.state.compare_jobs = CompareJobs()
    app.state.metrics_registry = registry_for(app.state)
    usage_metrics.register(app.state.metrics_registry, app.state)
    app.state.oidc = OidcProvider(settings) if settings.oidc_issuer else None
    engine = app.state.engine_override or await asyncio.to_thread(build_engine, settings)
    app.state.engine = engine
    app.state.adapters = await start_adapter_service(settings, engine)
    app.state.answers = AnswerContext(
        settings=settings,
        engine=engine,
        adapters=app.state.adapters,
        limits=app.state.limits,
        session_factory=app.state.session_factory,
        streams=app.state.streams,
    )
    # Documents queued or left half-indexed by a crash are picked up by the ingestion worker.
    app.state.knowledge = await asyncio.to_thread(
        start_knowledge, settings, app.state.session_factory
    )
    retention = asyncio.create_task(retention_loop(settings, app.state.session_factory))
    # Training jobs run in worker processes; this loop follows them (and resumes lost ones).
    app.state.jobs = JobRunner(settings, app.state.session_factory, app.state.adapters)
    jobs_loop = asyncio.create_task(app.state.jobs.run())
    app.state.drafts = DraftRuns()  # dataset records drafted from passages, in the background
    await export_now(settings, app.state.session_factory)
    head_export = asyncio.create_task(head_export_loop(settings, app.state.session_factory))
    try:
        yield
    finally:
        retention.cancel()
        jobs_loop.cancel()
        head_export.cancel()
        stop_adapter_service(app.state.adapters)
        await asyncio.to_thread(stop_knowledge, app.state.knowledge)  # a page at most
        await app.state.drafts.close()  # its answer being written ends as stopped
        await wait_for_streams(app.state.streams, settings.shutdown_grace_seconds)
        await export_now(settings, app.state.session_factory)  # after answers are stored
        if app.state.engine_override is None:
            await engine.close()
        app.state.engine = None
        app.state.answers = None
        database.dispose()


def create_app(settings: Settings | None = None, *, engine=None) -> FastAPI:  # noqa: ANN001
    """Build the app. `engine` replaces the configured one (tests inject a scripted engine)."""
    app = FastAPI(
        title="Teller", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.settings = settings or Settings()
    app.state.engine_override = engine
    app.state.engine = None
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(ops_router)
    # Before the pages: a route is found by trying each in order, and /v1 is the hot path.
    app.include_router(openai_router)
    app.include_router(web_router)  # the favicon
    app.include_router(chat_router)
    app.include_router(admin_router)  # every /admin page
    app.include_router(improve_router)  # feedback, /admin/datasets, /admin/training, lineage
    app.include_router(auth_router)
    app.include_router(oidc_router)
    app.include_router(keys_router)
    app.add_exception_handler(NotSignedIn, not_signed_in)
    app.add_exception_handler(OpenAIError, openai_error_handler)

    # Added first, so innermost of the middleware (see BodyLimitMiddleware).
    upload_bytes = app.state.settings.adapter_max_archive_bytes + UPLOAD_SLACK_BYTES
    knowledge_bytes = (
        app.state.settings.knowledge_max_file_bytes * app.state.settings.knowledge_max_upload_files
        + UPLOAD_SLACK_BYTES
    )
    app.add_middleware(
        BodyLimitMiddleware,
        default=app.state.settings.max_request_bytes,
        by_path={
            "/admin/adapters/upload": upload_bytes,
            "/admin/api/adapters": upload_bytes,
            KNOWLEDGE_UPLOAD_PATH: knowledge_bytes,
        },
    )

    # CSP and the other security headers, `no-store` when signed in, the CSRF cookie.
    app.add_middleware(SecurityHeadersMiddleware)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        fields = ", ".join(".".join(str(p) for p in e["loc"][1:]) or "body" for e in exc.errors())
        message = f"The request is missing or has invalid fields: {fields}."
        return errors.error_response(request, 400, message)

    @app.exception_handler(LimitExceeded)
    async def over_limit(request: Request, exc: LimitExceeded) -> Response:
        """429 with Retry-After; an HTMX form shows the sentence where its errors go."""
        headers = {"Retry-After": str(exc.retry_after)}
        if is_htmx(request):
            headers |= {"HX-Retarget": "#composer-error", "HX-Reswap": "innerHTML"}
        return errors.error_response(request, 429, exc.message, headers)

    # Browsers get styled pages, HTMX a sentence, API clients JSON (app/web/errors.py).
    app.add_exception_handler(StarletteHTTPException, errors.http_error)
    app.add_exception_handler(Exception, errors.server_error)

    # Outermost: request ids and timing cover every other middleware and route.
    app.add_middleware(RequestContextMiddleware)
    return app
