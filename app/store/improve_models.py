"""Tables of the improvement loop: feedback on answers, datasets, training jobs (migration 0008).

Lineage runs through foreign keys and stored copies: a dataset record keeps the feedback row
or the passage text it came from, a training job keeps its frozen dataset version and the
adapter version it produced, and every answer already names its adapter version.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.store.models import Base, utcnow


class Feedback(Base):
    """One person's verdict on one answer; its author may change it (one row per pair)."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("message_id", "user_id", name="ux_feedback_message_user"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    rating: Mapped[int]
    """+1 thumbs up, -1 thumbs down."""
    comment: Mapped[str] = mapped_column(Text, default="")
    correction: Mapped[str] = mapped_column(Text, default="")
    """The answer as it should have been; empty when none was given."""
    adapter_name: Mapped[str | None] = mapped_column(String(128))
    adapter_version: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RecordState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    versions: Mapped[list[DatasetVersion]] = relationship(
        order_by="DatasetVersion.version", cascade="all, delete-orphan", passive_deletes=True
    )


class DatasetVersion(Base):
    """A draft (records change) until frozen; a frozen version has a sha256 and never changes."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version", name="ux_dataset_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    version: Mapped[int]
    sha256: Mapped[str | None] = mapped_column(String(64))
    """sha256 of the exported JSONL (train and held-out lines); set when frozen."""
    train_records: Mapped[int] = mapped_column(default=0)
    eval_records: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    frozen_at: Mapped[datetime | None]
    frozen_by: Mapped[int | None]

    dataset: Mapped[Dataset] = relationship(back_populates="versions")
    records: Mapped[list[DatasetRecord]] = relationship(
        order_by="DatasetRecord.id", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def frozen(self) -> bool:
        return self.frozen_at is not None


class DatasetRecord(Base):
    """One instruction record and where it came from (feedback, an upload, a passage)."""

    __tablename__ = "dataset_records"

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="CASCADE"), index=True
    )
    instruction: Mapped[str] = mapped_column(Text)
    input: Mapped[str] = mapped_column(Text, default="")
    output: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    """`feedback`, `upload` or `draft`."""
    source_note: Mapped[str] = mapped_column(Text, default="")
    """The upload's file name and line, or the passage text a draft was written from."""
    feedback_id: Mapped[int | None] = mapped_column(
        ForeignKey("feedback.id", ondelete="SET NULL"), index=True
    )
    passage_id: Mapped[int | None]
    state: Mapped[str] = mapped_column(String(16), default=RecordState.PENDING)
    pii: Mapped[str] = mapped_column(String(200), default="")
    """What looks like personal data (comma-separated kinds); empty when nothing does."""
    split: Mapped[str] = mapped_column(String(8), default="")
    """`train` or `eval`, assigned when the version is frozen."""


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    EVALUATING = "evaluating"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.EVALUATING)


class TrainingJob(Base):
    __tablename__ = "training_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"))
    preset: Mapped[str] = mapped_column(String(100))
    base_model: Mapped[str] = mapped_column(String(255), default="")
    overrides: Mapped[str] = mapped_column(Text, default="[]")
    """JSON list of `key=value` strings passed to `teller train --set`."""
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    run_dir: Mapped[str] = mapped_column(Text, default="")
    pid: Mapped[int | None]
    note: Mapped[str] = mapped_column(Text, default="")
    """Why it failed, was interrupted, or resumed; a memory-check note."""
    adapter_name: Mapped[str | None] = mapped_column(String(128))
    adapter_version: Mapped[int | None]
    evaluation: Mapped[str] = mapped_column(Text, default="")
    """The gate's JSON result (new version vs the default), empty until evaluated."""
    created_by: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    dataset_version: Mapped[DatasetVersion] = relationship()
