"""Routes that draft dataset records from a knowledge base: start a run (post/redirect/get),
poll its progress (an HTMX fragment of the dataset page), stop it. Admins only."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from app.deps import AdminUser, AnswersDep, SessionDep
from app.improve import datasets as ds
from app.improve.draft_runs import DraftRuns
from app.improve.drafts import (
    DraftPassage,
    drafted_passages,
    knowledge_base_for,
    parse_count,
    pick_passages,
)
from app.store.improve_models import Dataset
from app.store.models import User
from app.web.flash import flash
from app.web.templating import is_htmx, render_fragment

router = APIRouter()


def get_drafts(request: Request) -> DraftRuns:
    return request.app.state.drafts


DraftsDep = Annotated[DraftRuns, Depends(get_drafts)]


def _dataset(session: SessionDep, dataset_id: int) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise HTTPException(404, "No such dataset.")
    return dataset


def _back(request: Request, page: str, *, notice: str = "", error: str = "") -> Response:
    flash(request, page, notice=notice, error=error)
    return RedirectResponse(f"{page}#drafting", status_code=303)


def _prepare(
    session: Session, admin: User, dataset: Dataset, raw_base: str, raw_count: str
) -> tuple[int, str, list[DraftPassage], int]:
    """(draft version id, knowledge base name, passages, count asked) of a drafting request.

    Raises:
        DatasetError: a bad count, a knowledge base the admin may not use, nothing left.
    """
    count = parse_count(raw_count)
    base_id, base_name = knowledge_base_for(session=session, user=admin, raw_id=raw_base)
    draft = ds.draft_of(session=session, dataset=dataset)
    chosen = pick_passages(
        session=session, knowledge_base_id=base_id, count=count, skip=drafted_passages(draft)
    )
    if not chosen:
        raise ds.DatasetError(
            f"{base_name} has no indexed passage left to draft from (version {draft.version} "
            "holds drafts from every one): upload documents to it, or choose another "
            "knowledge base."
        )
    session.commit()
    return draft.id, base_name, chosen, count


@router.post("/admin/datasets/{dataset_id}/draft")
async def start_drafting(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    answers: AnswersDep,
    drafts: DraftsDep,
    dataset_id: int,
    knowledge_base_id: Annotated[str, Form(max_length=20)] = "",
    passages: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Check the request, pick the passages, start the run; the page shows its progress."""
    dataset = await asyncio.to_thread(_dataset, session, dataset_id)
    page = f"/admin/datasets/{dataset_id}"
    try:
        version_id, base_name, chosen, count = await asyncio.to_thread(
            _prepare, session, admin, dataset, knowledge_base_id, passages
        )
        drafts.start(
            answers,
            dataset_id=dataset.id,
            version_id=version_id,
            admin_id=admin.id,
            knowledge_base=base_name,
            passages=chosen,
            endpoint=request.url.path,
        )
    except ds.DatasetError as exc:
        await asyncio.to_thread(session.rollback)
        return _back(request, page, error=str(exc))
    notice = f"Drafting from {len(chosen)} passage(s) of {base_name}"
    if len(chosen) < count:
        notice += f" (it has {len(chosen)} left of the {count} asked for)"
    return _back(request, page, notice=notice + "; the records arrive below as drafts.")


@router.post("/admin/datasets/{dataset_id}/draft/stop")
def stop_drafting(
    request: Request, admin: AdminUser, session: SessionDep, drafts: DraftsDep, dataset_id: int
) -> Response:
    _dataset(session, dataset_id)
    run = drafts.latest(dataset_id)
    page = f"/admin/datasets/{dataset_id}"
    if run is None or not run.running or run.stopping:
        return _back(request, page, error="No drafting is running for this dataset.")
    run.stop(f"Stopped by {admin.username}.")
    return _back(request, page, notice="Drafting stops after the passage being written.")


@router.get("/admin/datasets/{dataset_id}/drafting")
def drafting_progress(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    drafts: DraftsDep,
    dataset_id: int,
    watching: int = 0,
) -> Response:
    """The progress block. A page that watched a run end reloads (HX-Refresh) to show the
    new records; one that did not just gets the block."""
    dataset = _dataset(session, dataset_id)
    run = drafts.latest(dataset_id)
    if watching and is_htmx(request) and (run is None or not run.running):
        return Response(status_code=200, headers={"HX-Refresh": "true"})
    html = render_fragment(request, "improve/drafting.html", {"dataset": dataset, "run": run})
    return Response(html, media_type="text/html")
