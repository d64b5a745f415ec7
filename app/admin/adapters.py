"""`/admin/adapters`: the store with each manifest; upload, activate, roll back, remove.

Thin routes: the registry checks packages, the adapter service keeps the engine in step and
writes every change to the audit trail with the admin who made it. Every form posts, then
redirects to the page (post/redirect/get); what it did waits there once (`app.web.flash`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, Response, UploadFile, status
from fastapi.responses import RedirectResponse

from app.adapters.errors import AdapterConflict, AdapterError, AdapterNotFound
from app.adapters.service import Actor, AdapterService
from app.admin.adapters_compare import router as compare_router
from app.deps import AdaptersDep, AdminUser, SessionDep
from app.improve.gate import summaries as gate_summaries
from app.store.models import User
from app.web.flash import flash, take_flash
from app.web.templating import is_htmx, render

router = APIRouter(prefix="/admin/adapters")
PAGE = "/admin/adapters"


def web_actor(admin: User) -> Actor:
    return Actor(via="web", user_id=admin.id, username=admin.username)


def status_of(exc: AdapterError) -> int:
    if isinstance(exc, AdapterNotFound):
        return status.HTTP_404_NOT_FOUND
    if isinstance(exc, AdapterConflict):
        return status.HTTP_409_CONFLICT
    return status.HTTP_400_BAD_REQUEST


def page_context(adapters: AdapterService, request: Request) -> dict[str, Any]:
    """What the page shows: the store, its state, and each evaluated version's gate."""
    registry = adapters.registry
    with request.app.state.session_factory() as session:
        gates = gate_summaries(session=session)
    state = registry.state()
    versions = registry.versions()
    default = registry.default()
    refs = [v.ref for v in versions]
    return {
        "versions": versions,
        "default": default,
        "current": state.current,
        "loaded": adapters.loaded,
        "history": list(reversed(state.history[-30:])),
        "compare_choices": [("base", "Base model (no adapter)"), *((r, r) for r in refs)],
        "compare_right": default.ref if default else "base",
        "compare_left": refs[-1] if refs else "base",
        "served_base": registry.served_base,
        "gates": gates,
    }


def _page(
    request: Request,
    adapters: AdapterService,
    *,
    notice: str = "",
    error: str = "",
    code: int = status.HTTP_200_OK,
) -> Response:
    """After a post: HTMX gets the store's block with the outcome, a form is redirected to the
    page, which shows the outcome once."""
    if not is_htmx(request):
        flash(request, PAGE, notice=notice, error=error)
        return RedirectResponse(PAGE, status_code=status.HTTP_303_SEE_OTHER)
    context = page_context(adapters, request) | {"notice": notice, "error": error}
    return render(request, "admin/adapters.html", context, block="store", status_code=code)


@router.get("")
def adapters_page(request: Request, admin: AdminUser, adapters: AdaptersDep) -> Response:
    outcome = take_flash(request, PAGE)
    context = page_context(adapters, request) | {
        "notice": outcome.get("notice", ""),
        "error": outcome.get("error", ""),
    }
    return render(request, "admin/adapters.html", context)


@router.post("/upload")
def upload(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    adapters: AdaptersDep,
    package: Annotated[UploadFile, File()],
    name: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """Check and store an uploaded zip as the next version; a refusal stores nothing."""
    try:
        stored = adapters.import_upload(
            package.file,
            package.filename or "",
            session=session,
            actor=web_actor(admin),
            name=name.strip() or None,
        )
    except AdapterError as exc:
        return _page(request, adapters, error=f"Upload refused: {exc}", code=status_of(exc))
    return _page(
        request,
        adapters,
        notice=f"Stored {stored.ref}. Activate it to make it the default.",
        code=status.HTTP_201_CREATED,
    )


@router.post("/{name}/{version}/activate")
async def activate(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    adapters: AdaptersDep,
    name: str,
    version: int,
) -> Response:
    """Load the version into the engine, then make it the default (a roll back if older)."""
    try:
        target, action = await adapters.activate(
            name, version, session=session, actor=web_actor(admin)
        )
    except AdapterError as exc:
        return _page(request, adapters, error=str(exc), code=status_of(exc))
    verb = "Rolled back to" if action == "rollback" else "Activated"
    return _page(request, adapters, notice=f"{verb} {target.ref}: new answers use it now.")


@router.post("/deactivate")
async def deactivate(
    request: Request, admin: AdminUser, session: SessionDep, adapters: AdaptersDep
) -> Response:
    await adapters.deactivate(session=session, actor=web_actor(admin))
    return _page(request, adapters, notice="The bare base model is now the default.")


@router.post("/{name}/{version}/remove")
async def remove(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    adapters: AdaptersDep,
    name: str,
    version: int,
) -> Response:
    try:
        removed = await adapters.remove(name, version, session=session, actor=web_actor(admin))
    except AdapterError as exc:
        return _page(request, adapters, error=str(exc), code=status_of(exc))
    return _page(request, adapters, notice=f"Removed {removed.ref}.")


router.include_router(compare_router)
