"""Lineage: an answer → its adapter version → the training job that made it → the frozen
dataset version → the records, and each record's feedback (and the answer that feedback was
on) or passage (a link to it while its document is in the knowledge base)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.improve.drafts import passage_links
from app.store.improve_models import DatasetRecord, Feedback, JobState, TrainingJob
from app.store.models import Message


def lineage_of(*, session: Session, message: Message) -> dict[str, Any]:
    job = None
    if message.adapter_name and message.adapter_version is not None:
        job = session.scalar(
            select(TrainingJob).where(
                TrainingJob.adapter_name == message.adapter_name,
                TrainingJob.adapter_version == message.adapter_version,
                TrainingJob.state == JobState.FINISHED,
            )
        )
    version = job.dataset_version if job else None
    records: list[dict[str, Any]] = []
    if version is not None:
        rows = session.scalars(
            select(DatasetRecord)
            .where(DatasetRecord.version_id == version.id, DatasetRecord.split != "")
            .order_by(DatasetRecord.id)
        )
        for record in rows:
            feedback = session.get(Feedback, record.feedback_id) if record.feedback_id else None
            records.append({"record": record, "feedback": feedback})
        links = passage_links(
            session=session,
            passage_ids={i["record"].passage_id for i in records if i["record"].passage_id},
        )
        for item in records:
            item["passage_link"] = links.get(item["record"].passage_id)
    return {"job": job, "dataset_version": version, "records": records}
