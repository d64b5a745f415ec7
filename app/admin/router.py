"""The admin console: `/admin` and every admin page, included here so the app includes one
router for all of them (each page lives in its own module; the knowledge, groups and usage
pages in their features)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import RedirectResponse

from app.admin import adapters, adapters_api, audit, status, users
from app.deps import AdminUser
from app.groups.router import router as groups_router
from app.knowledge.router import router as knowledge_router
from app.usage.router import router as usage_router

router = APIRouter()


@router.get("/admin")
def admin_home(_: AdminUser) -> RedirectResponse:
    return RedirectResponse("/admin/status", status_code=303)


for page in (
    status.router,
    users.router,
    audit.router,
    adapters.router,  # with /admin/adapters/compare
    adapters_api.router,
    knowledge_router,
    groups_router,
    usage_router,
):
    router.include_router(page)
