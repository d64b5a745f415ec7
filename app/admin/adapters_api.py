"""`/admin/api/adapters`: the JSON API `teller adapters ...` uses against a running server.

Authenticated by the local admin token (see `app/adapters/admin_token.py`), not by a browser
session, so there is no cookie to forge and no CSRF token to check.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Request, UploadFile
from fastapi import status as http
from pydantic import BaseModel

from app.adapters.admin_token import token_matches
from app.adapters.errors import AdapterError
from app.adapters.registry import AdapterVersion, parse_ref
from app.adapters.service import AdapterService
from app.admin.adapters import record, status_of
from app.deps import AdaptersDep, SessionDep


def require_admin_token(request: Request, authorization: Annotated[str, Header()] = "") -> None:
    """Raises 401 unless the request carries the server's current local admin token."""
    adapters = getattr(request.app.state, "adapters", None)
    if adapters is None or not token_matches(adapters.admin_token, authorization):
        raise HTTPException(
            http.HTTP_401_UNAUTHORIZED,
            "missing or wrong admin token (read it from the data dir's admin.token)",
            headers={"WWW-Authenticate": "Bearer"},
        )


router = APIRouter(prefix="/admin/api/adapters", dependencies=[Depends(require_admin_token)])
ACTOR = "cli"


class RefIn(BaseModel):
    ref: str


def describe(version: AdapterVersion) -> dict[str, Any]:
    manifest = version.manifest
    return {
        "ref": version.ref,
        "name": version.name,
        "version": version.version,
        "sha256": version.sha256,
        "base_model": manifest.base_model,
        "prompt_format": str(manifest.prompt_format),
        "created_at": manifest.created_at,
        "metrics": manifest.metrics,
    }


def listing(adapters: AdapterService) -> dict[str, Any]:
    registry = adapters.registry
    default = registry.default()
    return {
        "default": default.ref if default else None,
        "current": registry.state().current,
        "loaded": sorted(adapters.loaded),
        "adapters": [describe(v) for v in registry.versions()],
    }


def _fail(exc: AdapterError) -> HTTPException:
    return HTTPException(status_of(exc), str(exc))


@router.get("")
def list_adapters(adapters: AdaptersDep) -> dict[str, Any]:
    return listing(adapters)


@router.post("", status_code=http.HTTP_201_CREATED)
def import_adapter(
    session: SessionDep,
    adapters: AdaptersDep,
    package: Annotated[UploadFile, File()],
    name: Annotated[str, Form()] = "",
    allow_base_mismatch: Annotated[bool, Form()] = False,
) -> dict[str, Any]:
    """A zip from the CLI; `allow_base_mismatch` is the CLI's explicit override flag."""
    try:
        stored = adapters.registry.import_upload(
            package.file,
            package.filename or "",
            name=name or None,
            actor=ACTOR,
            allow_base_mismatch=allow_base_mismatch,
        )
    except AdapterError as exc:
        raise _fail(exc) from None
    record(session, "import", stored, actor_id=None, via=ACTOR)
    return describe(stored)


@router.post("/activate")
async def activate(body: RefIn, session: SessionDep, adapters: AdaptersDep) -> dict[str, Any]:
    try:
        target, action = await adapters.activate(*parse_ref(body.ref), actor=ACTOR)
    except AdapterError as exc:
        raise _fail(exc) from None
    record(session, action, target, actor_id=None, via=ACTOR)
    return {"action": action, **describe(target)}


@router.post("/remove")
async def remove(body: RefIn, session: SessionDep, adapters: AdaptersDep) -> dict[str, Any]:
    try:
        name, version = parse_ref(body.ref)
        if version is None:
            raise AdapterError(f"say which version to remove: {name}@VERSION")
        removed = await adapters.remove(name, version, actor=ACTOR)
    except AdapterError as exc:
        raise _fail(exc) from None
    record(session, "remove", removed, actor_id=None, via=ACTOR)
    return describe(removed)
