"""`/admin`: the console's entry point; each page lives in its own module."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import RedirectResponse

from app.deps import AdminUser

router = APIRouter(prefix="/admin")


@router.get("")
def admin_home(_: AdminUser) -> RedirectResponse:
    return RedirectResponse("/admin/status", status_code=303)
