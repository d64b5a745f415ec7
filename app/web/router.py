"""Routes every page shares: the favicon (browsers ask for /favicon.ico on their own)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.web.templating import STATIC_DIR

router = APIRouter()


@router.get("/favicon.ico", include_in_schema=False)
def favicon() -> FileResponse:
    return FileResponse(
        STATIC_DIR / "favicon.svg",
        media_type="image/svg+xml",
        headers={"Cache-Control": "public, max-age=86400"},
    )
