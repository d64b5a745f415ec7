"""`/admin/adapters`: the store with each manifest; upload, activate, roll back, remove.

Thin routes: the registry checks packages, the adapter service keeps the engine in step, and
every change is written to the audit trail with the admin who made it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, Response, UploadFile, status
from sqlalchemy.orm import Session

from app.adapters.errors import AdapterConflict, AdapterError, AdapterNotFound
from app.adapters.registry import AdapterVersion
from app.adapters.service import AdapterService
from app.admin.adapters_compare import router as compare_router
from app.audit import service as audit
from app.deps import AdaptersDep, AdminUser, SessionDep
from app.web.templating import render

router = APIRouter(prefix="/admin/adapters")

AUDIT_ACTIONS = {
    "import": audit.ADAPTER_UPLOADED,
    "activate": audit.ADAPTER_ACTIVATED,
    "rollback": audit.ADAPTER_ROLLED_BACK,
    "deactivate": audit.ADAPTER_ACTIVATED,
    "remove": audit.ADAPTER_REMOVED,
}


def record(
    session: Session,
    action: str,
    version: AdapterVersion | None,
    *,
    actor_id: int | None,
    via: str,
) -> None:
    """One audit row per change to the store (uploads, activations, roll-backs, removals)."""
    details: dict[str, Any] = {"via": via}
    if version is not None:
        details |= {
            "adapter_name": version.name,
            "adapter_version": version.version,
            "adapter_sha256": version.sha256,
            "base_model": version.manifest.base_model,
        }
    else:
        details["adapter_name"] = "(base model)"
    if actor_id is None:
        details["username"] = f"local admin ({via})"
    audit.record_event(
        session=session, action=AUDIT_ACTIONS[action], actor_id=actor_id, details=details
    )


def status_of(exc: AdapterError) -> int:
    if isinstance(exc, AdapterNotFound):
        return status.HTTP_404_NOT_FOUND
    if isinstance(exc, AdapterConflict):
        return status.HTTP_409_CONFLICT
    return status.HTTP_400_BAD_REQUEST


def page_context(adapters: AdapterService) -> dict[str, Any]:
    registry = adapters.registry
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
    }


def _page(
    request: Request,
    adapters: AdapterService,
    *,
    notice: str = "",
    error: str = "",
    code: int = status.HTTP_200_OK,
) -> Response:
    context = page_context(adapters) | {"notice": notice, "error": error}
    return render(request, "admin/adapters.html", context, block="store", status_code=code)


@router.get("")
def adapters_page(request: Request, admin: AdminUser, adapters: AdaptersDep) -> Response:
    return _page(request, adapters)


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
        stored = adapters.registry.import_upload(
            package.file, package.filename or "", name=name.strip() or None, actor=admin.username
        )
    except AdapterError as exc:
        return _page(request, adapters, error=f"Upload refused: {exc}", code=status_of(exc))
    record(session, "import", stored, actor_id=admin.id, via="web")
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
        target, action = await adapters.activate(name, version, actor=admin.username)
    except AdapterError as exc:
        return _page(request, adapters, error=str(exc), code=status_of(exc))
    record(session, action, target, actor_id=admin.id, via="web")
    verb = "Rolled back to" if action == "rollback" else "Activated"
    return _page(request, adapters, notice=f"{verb} {target.ref}: new answers use it now.")


@router.post("/deactivate")
async def deactivate(
    request: Request, admin: AdminUser, session: SessionDep, adapters: AdaptersDep
) -> Response:
    await adapters.deactivate(actor=admin.username)
    record(session, "deactivate", None, actor_id=admin.id, via="web")
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
        removed = await adapters.remove(name, version, actor=admin.username)
    except AdapterError as exc:
        return _page(request, adapters, error=str(exc), code=status_of(exc))
    record(session, "remove", removed, actor_id=admin.id, via="web")
    return _page(request, adapters, notice=f"Removed {removed.ref}.")


router.include_router(compare_router)
