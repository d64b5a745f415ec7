"""knowledge: drop knowledge_bases.visible_to, which nothing reads

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-10 00:10:00

Every knowledge base was written with `visible_to = 'everyone'` and the column was never read:
who may see a knowledge base is what the user's groups grant (`user_group_knowledge_bases`,
migration 0006), decided in one place (`app.knowledge.service.visible_knowledge_bases`).
Nothing else changes.

SQLite drops the column in place (`ALTER TABLE ... DROP COLUMN`, SQLite 3.35 or newer, which
the knowledge store already needs for INSERT ... RETURNING). Rebuilding the table instead, as
batch mode would, deletes every document: with foreign keys on, dropping the old table
cascades to them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_DROP_COLUMN = (3, 35)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        version = bind.dialect.dbapi.sqlite_version_info
        if tuple(version) < SQLITE_DROP_COLUMN:
            raise RuntimeError(
                f"Teller needs SQLite 3.35 or newer; this Python's SQLite is "
                f"{'.'.join(map(str, version))}. Run Teller on a Python built with a newer "
                "SQLite, or point TELLER_DATABASE_URL at PostgreSQL."
            )
    op.drop_column("knowledge_bases", "visible_to")


def downgrade() -> None:
    op.add_column(
        "knowledge_bases",
        sa.Column("visible_to", sa.String(length=255), nullable=False, server_default="everyone"),
    )
