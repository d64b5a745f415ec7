"""improve: feedback on answers, datasets with versions and records, training jobs

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 18:40:00

New tables only; nothing existing changes. Feedback rows go with their message (cascade);
dataset records keep a copy of what they hold, so a deleted conversation leaves a frozen
dataset version intact (its `feedback_id` becomes NULL).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "message_id",
            sa.Integer(),
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column(
            "user_id",
            sa.Integer(),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("correction", sa.Text(), nullable=False),
        sa.Column("adapter_name", sa.String(128)),
        sa.Column("adapter_version", sa.Integer()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("message_id", "user_id", name="ux_feedback_message_user"),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "dataset_id",
            sa.Integer(),
            sa.ForeignKey("datasets.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64)),
        sa.Column("train_records", sa.Integer(), nullable=False),
        sa.Column("eval_records", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("frozen_at", sa.DateTime()),
        sa.Column("frozen_by", sa.Integer()),
        sa.UniqueConstraint("dataset_id", "version", name="ux_dataset_version"),
    )
    op.create_table(
        "dataset_records",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "version_id",
            sa.Integer(),
            sa.ForeignKey("dataset_versions.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("instruction", sa.Text(), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("output", sa.Text(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("source_note", sa.Text(), nullable=False),
        sa.Column(
            "feedback_id",
            sa.Integer(),
            sa.ForeignKey("feedback.id", ondelete="SET NULL"),
            index=True,
        ),
        sa.Column("passage_id", sa.Integer()),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("pii", sa.String(200), nullable=False),
        sa.Column("split", sa.String(8), nullable=False),
    )
    op.create_table(
        "training_jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "dataset_version_id",
            sa.Integer(),
            sa.ForeignKey("dataset_versions.id"),
            nullable=False,
        ),
        sa.Column("preset", sa.String(100), nullable=False),
        sa.Column("base_model", sa.String(255), nullable=False),
        sa.Column("overrides", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("run_dir", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer()),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("adapter_name", sa.String(128)),
        sa.Column("adapter_version", sa.Integer()),
        sa.Column("evaluation", sa.Text(), nullable=False),
        sa.Column("created_by", sa.Integer()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime()),
        sa.Column("finished_at", sa.DateTime()),
    )


def downgrade() -> None:
    op.drop_table("training_jobs")
    op.drop_table("dataset_records")
    op.drop_table("dataset_versions")
    op.drop_table("datasets")
    op.drop_table("feedback")
