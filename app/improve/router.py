"""Routes of the improvement loop: feedback on answers (everyone), datasets, training jobs,
the evaluation gate with Promote, and lineage (admins). Thin: validate, call the service,
render; every form posts, then redirects (post/redirect/get)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, Response, UploadFile
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.adapters.errors import AdapterError
from app.admin.adapters import web_actor
from app.deps import AdaptersDep, AdminUser, CurrentUser, SessionDep, SettingsDep
from app.improve import datasets as ds
from app.improve.draft_routes import DraftsDep
from app.improve.draft_routes import router as draft_router
from app.improve.drafts import DEFAULT_PASSAGES, MAX_PASSAGES, passage_links
from app.improve.feedback import FeedbackError, feedback_for, set_feedback
from app.improve.jobs import PRESETS, JobError, JobRunner, read_metrics, read_state
from app.improve.lineage import lineage_of
from app.improve.progress import progress_view
from app.knowledge.service import visible_knowledge_bases
from app.store.improve_models import (
    ACTIVE_JOB_STATES,
    Dataset,
    DatasetRecord,
    DatasetVersion,
    TrainingJob,
)
from app.store.models import Conversation, Message
from app.web.flash import flash, take_flash
from app.web.templating import is_htmx, render, render_fragment

router = APIRouter()
router.include_router(draft_router)  # before /admin/datasets/{id}/{action} catches /draft


def get_jobs(request: Request) -> JobRunner:
    return request.app.state.jobs


JobsDep = Annotated[JobRunner, Depends(get_jobs)]


def _back(request: Request, url: str, *, notice: str = "", error: str = "") -> Response:
    page = url.split("#")[0]
    flash(request, page, notice=notice, error=error)
    return RedirectResponse(url, status_code=303)


# --- feedback -------------------------------------------------------------------------------


@router.post("/messages/{message_id}/feedback")
def give_feedback(
    request: Request,
    user: CurrentUser,
    session: SessionDep,
    message_id: int,
    rating: Annotated[str, Form(max_length=8)],
    comment: Annotated[str, Form()] = "",
    correction: Annotated[str, Form()] = "",
) -> Response:
    try:
        row = set_feedback(
            session=session,
            user=user,
            message_id=message_id,
            rating=rating,
            comment=comment,
            correction=correction,
        )
        error = ""
    except FeedbackError as exc:
        if exc.status == 404:
            raise HTTPException(404, str(exc)) from None
        row, error = None, str(exc)
    message = session.get(Message, message_id)
    assert message is not None  # noqa: S101 - checked by set_feedback or a 404 above
    if is_htmx(request):
        if row is None:
            row = feedback_for(session=session, user_id=user.id, message_ids=[message_id]).get(
                message_id
            )
        html = render_fragment(
            request,
            "improve/feedback.html",
            {"message": message, "feedback": row, "feedback_error": error, "saved": not error},
        )
        return Response(html, media_type="text/html", status_code=200 if not error else 400)
    conversation = f"/c/{message.conversation_id}"
    return RedirectResponse(f"{conversation}#msg-{message_id}", status_code=303)


# --- datasets -------------------------------------------------------------------------------


@router.get("/admin/datasets")
def datasets_page(request: Request, admin: AdminUser, session: SessionDep) -> Response:
    outcome = take_flash(request, "/admin/datasets")
    rows = session.scalars(select(Dataset).order_by(Dataset.name)).all()
    return render(request, "improve/datasets.html", {"datasets": rows, **outcome})


@router.post("/admin/datasets")
def create_dataset(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    name: Annotated[str, Form(max_length=200)],
) -> Response:
    try:
        dataset = ds.create_dataset(session=session, name=name, actor_id=admin.id)
    except ds.DatasetError as exc:
        return _back(request, "/admin/datasets", error=str(exc))
    return _back(request, f"/admin/datasets/{dataset.id}", notice=f"Created {dataset.name}.")


def _dataset(session: SessionDep, dataset_id: int) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise HTTPException(404, "No such dataset.")
    return dataset


@router.get("/admin/datasets/{dataset_id}")
def dataset_page(
    request: Request, admin: AdminUser, session: SessionDep, drafts: DraftsDep, dataset_id: int
) -> Response:
    dataset = _dataset(session, dataset_id)
    outcome = take_flash(request, f"/admin/datasets/{dataset_id}")
    latest = dataset.versions[-1]
    passages = {r.passage_id for r in latest.records if r.passage_id}
    context = {
        "dataset": dataset,
        "version": latest,
        "knowledge_bases": visible_knowledge_bases(session=session, user=admin),
        "run": drafts.latest(dataset_id),
        "draft_default": DEFAULT_PASSAGES,
        "draft_max": MAX_PASSAGES,
        "passage_links": passage_links(session=session, passage_ids=passages),
    }
    return render(request, "improve/dataset.html", context | outcome)


@router.post("/admin/datasets/{dataset_id}/{action}")
async def dataset_action(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    settings: SettingsDep,
    dataset_id: int,
    action: str,
    file: Annotated[UploadFile | None, File()] = None,
) -> Response:
    """feedback (add rated answers), upload, approve-unflagged, freeze, new-version."""
    dataset = _dataset(session, dataset_id)
    page = f"/admin/datasets/{dataset_id}"
    try:
        draft = ds.draft_of(session=session, dataset=dataset)
        if action == "feedback":
            added, dropped = ds.add_feedback(session=session, version=draft)
            notice = f"Added {added} record(s) from feedback; {dropped} duplicate(s) dropped."
        elif action == "upload":
            if file is None or not file.filename:
                raise ds.DatasetError("Choose an Alpaca file (.jsonl, .json or .csv) to upload.")
            data = await file.read()
            added, dropped = await asyncio.to_thread(
                ds.add_upload, session=session, version=draft, filename=file.filename, data=data
            )
            notice = (
                f"Added {added} record(s) from {file.filename}; {dropped} duplicate(s) dropped."
            )
        elif action == "approve-unflagged":
            notice = f"Approved {ds.approve_unflagged(session=session, version=draft)} record(s)."
        elif action == "freeze":
            sha = ds.freeze(
                session=session, version=draft, actor_id=admin.id, files_dir=settings.data_dir
            )
            notice = f"Froze version {draft.version}: sha256 {sha}."
        elif action == "new-version":
            session.commit()
            notice = f"Version {draft.version} is the draft."
        else:
            raise HTTPException(404, "No such action.")
    except ds.DatasetError as exc:
        session.rollback()
        return _back(request, page, error=str(exc))
    return _back(request, page, notice=notice)


@router.post("/admin/datasets/{dataset_id}/records/{record_id}")
def review_record(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    dataset_id: int,
    record_id: int,
    action: Annotated[str, Form(max_length=16)],
    instruction: Annotated[str | None, Form()] = None,
    input_text: Annotated[str | None, Form(alias="input")] = None,
    output: Annotated[str | None, Form()] = None,
) -> Response:
    record = session.get(DatasetRecord, record_id)
    version = session.get(DatasetVersion, record.version_id) if record else None
    if record is None or version is None or version.dataset_id != dataset_id:
        raise HTTPException(404, "No such record.")
    page = f"/admin/datasets/{dataset_id}"
    try:
        ds.review(
            session=session,
            record=record,
            action=action,
            instruction=instruction,
            input_text=input_text,
            output=output,
        )
    except ds.DatasetError as exc:
        return _back(request, f"{page}#record-{record_id}", error=str(exc))
    return _back(request, f"{page}#record-{record_id}")


@router.get("/admin/datasets/{dataset_id}/v{version}.jsonl")
def export_version(
    admin: AdminUser, session: SessionDep, dataset_id: int, version: int
) -> Response:
    dataset = _dataset(session, dataset_id)
    found = next((v for v in dataset.versions if v.version == version), None)
    if found is None:
        raise HTTPException(404, "No such version.")
    filename = f"{dataset.name}-v{version}.jsonl"
    return Response(
        ds.export_jsonl(found),
        media_type="application/jsonl",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


# --- training jobs --------------------------------------------------------------------------


def _frozen_versions(session: SessionDep) -> list[DatasetVersion]:
    query = select(DatasetVersion).where(DatasetVersion.frozen_at.is_not(None))
    return list(session.scalars(query.order_by(DatasetVersion.id.desc())))


@router.get("/admin/training")
def training_page(request: Request, admin: AdminUser, session: SessionDep) -> Response:
    outcome = take_flash(request, "/admin/training")
    jobs = session.scalars(select(TrainingJob).order_by(TrainingJob.id.desc()).limit(50)).all()
    context = {"jobs": jobs, "versions": _frozen_versions(session), "presets": PRESETS}
    return render(request, "improve/training.html", context | outcome)


@router.post("/admin/training")
def start_job(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    jobs: JobsDep,
    dataset_version: Annotated[int, Form()],
    preset: Annotated[str, Form(max_length=100)],
    base_model: Annotated[str, Form(max_length=255)] = "",
    max_steps: Annotated[int, Form()] = 0,
    overrides: Annotated[str, Form(max_length=4000)] = "",
) -> Response:
    try:
        job = jobs.start(
            session=session,
            admin_id=admin.id,
            dataset_version_id=dataset_version,
            preset=preset,
            base_model=base_model,
            max_steps=max_steps,
            overrides=overrides,
        )
    except JobError as exc:
        session.rollback()
        return _back(request, "/admin/training", error=str(exc))
    return _back(request, f"/admin/training/{job.id}", notice=f"Started job {job.id}.")


def _job(session: SessionDep, job_id: int) -> TrainingJob:
    job = session.get(TrainingJob, job_id)
    if job is None:
        raise HTTPException(404, "No such training job.")
    return job


def _job_context(job: TrainingJob) -> dict[str, Any]:
    from pathlib import Path

    return {
        "job": job,
        "progress": progress_view(
            job, read_metrics(Path(job.run_dir)), read_state(Path(job.run_dir))
        ),
        "gate": json.loads(job.evaluation) if job.evaluation else None,
        "active": job.state in ACTIVE_JOB_STATES,
    }


@router.get("/admin/training/{job_id}")
def job_page(request: Request, admin: AdminUser, session: SessionDep, job_id: int) -> Response:
    job = _job(session, job_id)
    outcome = take_flash(request, f"/admin/training/{job_id}")
    return render(request, "improve/job.html", _job_context(job) | outcome)


@router.get("/admin/training/{job_id}/events")
async def job_events(
    request: Request, admin: AdminUser, session: SessionDep, job_id: int
) -> EventSourceResponse:
    """Live progress: the progress block again whenever metrics.jsonl or the state moves;
    `done` when the job has ended (the page then reloads to show the gate)."""
    _job(session, job_id)
    factory = request.app.state.session_factory

    async def events() -> AsyncIterator[ServerSentEvent]:
        last = ""
        while True:
            with factory() as fresh:
                job = fresh.get(TrainingJob, job_id)
                assert job is not None  # noqa: S101 - jobs are never deleted
                context = _job_context(job)
                html = render_fragment(request, "improve/progress.html", context)
            if html != last:
                last = html
                yield ServerSentEvent(html.replace("\n", " "), event="progress")
            if not context["active"]:
                yield ServerSentEvent("ended", event="done")
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.5)

    return EventSourceResponse(events())


@router.post("/admin/training/{job_id}/cancel")
def cancel_job(
    request: Request, admin: AdminUser, session: SessionDep, jobs: JobsDep, job_id: int
) -> Response:
    job = _job(session, job_id)
    try:
        jobs.cancel(session=session, job=job, admin_id=admin.id)
    except JobError as exc:
        return _back(request, f"/admin/training/{job_id}", error=str(exc))
    return _back(request, f"/admin/training/{job_id}", notice="Cancelled.")


@router.post("/admin/training/{job_id}/promote")
async def promote(
    request: Request,
    admin: AdminUser,
    session: SessionDep,
    adapters: AdaptersDep,
    job_id: int,
    confirm: Annotated[str, Form()] = "",
) -> Response:
    """Activate the job's version; a version worse on any metric needs the confirmation box."""
    job = _job(session, job_id)
    page = f"/admin/training/{job_id}"
    gate = json.loads(job.evaluation) if job.evaluation else None
    if job.adapter_name is None or job.adapter_version is None or gate is None:
        return _back(request, page, error="This job has no evaluated version to promote.")
    if gate["worse"] and confirm != "yes":
        worse = ", ".join(gate["worse"])
        return _back(
            request, page, error=f"The new version is worse on {worse}: tick the box to promote."
        )
    try:
        target, _ = await adapters.activate(
            job.adapter_name, job.adapter_version, session=session, actor=web_actor(admin)
        )
    except AdapterError as exc:
        return _back(request, page, error=str(exc))
    from app.audit.service import record_event

    record_event(
        session=session,
        action="evaluation.promote",
        actor_id=admin.id,
        details={
            "job_id": job.id,
            "adapter_name": target.name,
            "version": target.version,
            "worse": gate["worse"],
            "confirmed": bool(gate["worse"]),
        },
    )
    return _back(request, page, notice=f"Promoted {target.ref}: new answers use it now.")


# --- lineage --------------------------------------------------------------------------------


@router.get("/admin/lineage/answers/{message_id}")
def lineage_page(
    request: Request, admin: AdminUser, session: SessionDep, message_id: int
) -> Response:
    message = session.get(Message, message_id)
    if message is None or message.role != "assistant":
        raise HTTPException(404, "No such answer.")
    conversation = session.get(Conversation, message.conversation_id)
    return render(
        request,
        "improve/lineage.html",
        {"message": message, "conversation": conversation}
        | lineage_of(session=session, message=message),
    )
