"""`/admin/knowledge`: knowledge bases, multi-file upload, per-document state, passages.

Thin routes: `app.knowledge.service` checks and queues uploads, the ingestion worker indexes
them, and every change is audited there. Every form posts, then redirects (post/redirect/
get); the document table polls itself (HTMX) while a document is queued or being read.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Request, Response, UploadFile, status
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from app.deps import AdminUser, SessionDep, SettingsDep
from app.knowledge import service
from app.knowledge.schemas import DocumentRow
from app.store import knowledge_crud as store
from app.store.knowledge_models import KnowledgeBase
from app.web.templating import render

router = APIRouter(prefix="/admin/knowledge")
UPLOAD_PATH = "/admin/knowledge/upload"
PASSAGES_PER_PAGE = 50
NOTICES = {
    "created": "Knowledge base created: upload documents below.",
    "deleted": "Knowledge base deleted with its documents and passages.",
    "removed": "Document deleted; its passages are gone from search and future answers.",
}


class Flashes:
    """Per-file upload results carried across the redirect (a few minutes, in this process)."""

    def __init__(self, keep: int = 200, ttl_s: float = 600) -> None:
        self._items: OrderedDict[str, tuple[float, list[tuple[str, str]]]] = OrderedDict()
        self._lock = threading.Lock()
        self.keep, self.ttl_s = keep, ttl_s

    def put(self, messages: list[tuple[str, str]]) -> str:
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._items[token] = (time.monotonic(), messages)
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        return token

    def take(self, token: str) -> list[tuple[str, str]]:
        with self._lock:
            stamped = self._items.pop(token, None)
        if stamped is None or time.monotonic() - stamped[0] > self.ttl_s:
            return []
        return stamped[1]


flashes = Flashes()


def _base_or_404(session: Session, knowledge_base_id: int) -> KnowledgeBase:
    base = store.get_knowledge_base(session=session, knowledge_base_id=knowledge_base_id)
    if base is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such knowledge base.")
    return base


def _index_page(
    request: Request, session: Session, *, notice: str = "", error: str = "", code: int = 200
) -> Response:
    counts = store.knowledge_base_counts(session=session)
    return render(
        request,
        "admin/knowledge.html",
        {
            "bases": store.list_knowledge_bases(session=session),
            "counts": counts,
            "notice": notice,
            "error": error,
        },
        status_code=code,
    )


@router.get("")
def knowledge_page(
    request: Request, admin: AdminUser, session: SessionDep, done: str = ""
) -> Response:
    return _index_page(request, session, notice=NOTICES.get(done, ""))


@router.post("")
def create_base(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    name: Annotated[str, Form(max_length=200)],
    description: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    try:
        base = service.create_knowledge_base(
            session=session, name=name, description=description, actor_id=admin.id, via="web"
        )
    except service.KnowledgeError as exc:
        return _index_page(request, session, error=str(exc), code=400)
    return RedirectResponse(f"/admin/knowledge/{base.id}?done=created", status_code=303)


def _base_context(session: Session, base: KnowledgeBase) -> dict:
    documents = [
        DocumentRow.of(d) for d in store.list_documents(session=session, knowledge_base_id=base.id)
    ]
    return {"base": base, "documents": documents, "busy": any(d.busy for d in documents)}


@router.get("/{knowledge_base_id}")
def base_page(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
    knowledge_base_id: int,
    done: str = "",
    flash: str = "",
) -> Response:
    base = _base_or_404(session, knowledge_base_id)
    context = _base_context(session, base) | {
        "notice": NOTICES.get(done, ""),
        "results": flashes.take(flash) if flash else [],
        "max_file_mib": settings.knowledge_max_file_bytes / (1 << 20),
        "max_files": settings.knowledge_max_upload_files,
    }
    return render(request, "admin/knowledge_base.html", context)


@router.get("/{knowledge_base_id}/documents")
def documents_fragment(
    request: Request, admin: AdminUser, session: SessionDep, knowledge_base_id: int
) -> Response:
    """The document table alone: what the page polls while documents are being indexed."""
    base = _base_or_404(session, knowledge_base_id)
    return render(
        request, "admin/knowledge_base.html", _base_context(session, base), block="documents"
    )


@router.post("/upload")
def upload(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
    knowledge_base_id: Annotated[int, Form()],
    files: Annotated[list[UploadFile], File()],
) -> Response:
    """Check each file and queue it; each gets its own message, a refusal changes nothing."""
    base = _base_or_404(session, knowledge_base_id)
    results: list[tuple[str, str]] = []
    files = [f for f in files if f.filename]
    if not files:
        results.append(("refused", "Choose one or more files to upload."))
    elif len(files) > settings.knowledge_max_upload_files:
        results.append(
            (
                "refused",
                f"{len(files)} files in one upload; at most {settings.knowledge_max_upload_files} "
                "(TELLER_KNOWLEDGE_MAX_UPLOAD_FILES). Nothing was added.",
            )
        )
        files = []
    limit = settings.knowledge_max_file_bytes
    for upload_file in files:
        data = upload_file.file.read(limit + 1)  # a larger file is refused unread past this
        result = service.add_upload(
            session=session,
            settings=settings,
            knowledge_base=base,
            filename=upload_file.filename or "",
            data=data,
            actor_id=admin.id,
            via="web",
            size=upload_file.size,
        )
        results.append((result.outcome, result.message))
    if any(outcome == "queued" for outcome, _ in results):
        runtime = getattr(request.app.state, "knowledge", None)
        if runtime is not None:
            runtime.worker.wake()
    token = flashes.put(results)
    return RedirectResponse(f"/admin/knowledge/{base.id}?flash={token}", status_code=303)


@router.get("/{knowledge_base_id}/documents/{document_id}")
def document_page(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    knowledge_base_id: int,
    document_id: int,
    offset: int = 0,
) -> Response:
    base = _base_or_404(session, knowledge_base_id)
    document = store.get_document(session=session, document_id=document_id)
    if document is None or document.knowledge_base_id != base.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such document.")
    offset = max(0, offset)
    passages = store.document_chunks(
        session=session, document_id=document.id, limit=PASSAGES_PER_PAGE, offset=offset
    )
    return render(
        request,
        "admin/knowledge_document.html",
        {
            "base": base,
            "document": DocumentRow.of(document),
            "passages": passages,
            "offset": offset,
            "step": PASSAGES_PER_PAGE,
        },
    )


@router.post("/{knowledge_base_id}/documents/{document_id}/delete")
def delete_document(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
    knowledge_base_id: int,
    document_id: int,
) -> Response:
    base = _base_or_404(session, knowledge_base_id)
    document = store.get_document(session=session, document_id=document_id)
    if document is None or document.knowledge_base_id != base.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "No such document.")
    service.delete_document(
        session=session, settings=settings, document=document, actor_id=admin.id, via="web"
    )
    return RedirectResponse(f"/admin/knowledge/{base.id}?done=removed", status_code=303)


@router.post("/{knowledge_base_id}/delete")
def delete_base(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
    knowledge_base_id: int,
) -> Response:
    base = _base_or_404(session, knowledge_base_id)
    service.delete_knowledge_base(
        session=session, settings=settings, knowledge_base=base, actor_id=admin.id, via="web"
    )
    return RedirectResponse("/admin/knowledge?done=deleted", status_code=303)
