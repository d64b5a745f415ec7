"""`/admin/api/adapters`: the JSON API `teller adapters ...` uses against a running server.

Authenticated by the local admin token (see `app/adapters/admin_token.py`), not by a browser
session, so there is no cookie to forge and no CSRF token to check.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, UploadFile
from fastapi import status as http
from pydantic import BaseModel

from app.adapters.admin_token import token_matches
from app.adapters.errors import AdapterError
from app.adapters.registry import parse_ref
from app.adapters.service import LOCAL_ADMIN, describe, listing
from app.admin.adapters import status_of
from app.deps import AdaptersDep, SessionDep


def require_admin_token(
    adapters: AdaptersDep, authorization: Annotated[str, Header()] = ""
) -> None:
    """Raises 401 unless the request carries the server's current local admin token."""
    if not token_matches(adapters.admin_token, authorization):
        raise HTTPException(
            http.HTTP_401_UNAUTHORIZED,
            "missing or wrong admin token (read it from the data dir's admin.token)",
            headers={"WWW-Authenticate": "Bearer"},
        )


router = APIRouter(prefix="/admin/api/adapters", dependencies=[Depends(require_admin_token)])


class RefIn(BaseModel):
    ref: str


def _fail(exc: AdapterError) -> HTTPException:
    return HTTPException(status_of(exc), str(exc))


@router.get("")
def list_adapters(adapters: AdaptersDep) -> dict[str, Any]:
    return listing(adapters.registry, adapters.loaded)


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
        stored = adapters.import_upload(
            package.file,
            package.filename or "",
            session=session,
            actor=LOCAL_ADMIN,
            name=name or None,
            allow_base_mismatch=allow_base_mismatch,
        )
    except AdapterError as exc:
        raise _fail(exc) from None
    return describe(stored)


@router.post("/activate")
async def activate(body: RefIn, session: SessionDep, adapters: AdaptersDep) -> dict[str, Any]:
    try:
        target, action = await adapters.activate(
            *parse_ref(body.ref), session=session, actor=LOCAL_ADMIN
        )
    except AdapterError as exc:
        raise _fail(exc) from None
    return {"action": action, **describe(target)}


@router.post("/remove")
async def remove(body: RefIn, session: SessionDep, adapters: AdaptersDep) -> dict[str, Any]:
    try:
        name, version = parse_ref(body.ref)
        if version is None:
            raise AdapterError(f"say which version to remove: {name}@VERSION")
        removed = await adapters.remove(name, version, session=session, actor=LOCAL_ADMIN)
    except AdapterError as exc:
        raise _fail(exc) from None
    return describe(removed)
