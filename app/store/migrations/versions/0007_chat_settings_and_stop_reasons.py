"""chat: why an answer stopped, and each conversation's own sampling settings

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-08 09:00:00

`messages.stop_reason` says who or what cut a stopped answer short (the user's Stop, a closed
page, a server shutdown or restart, a disabled account), so the page can say which. Older
stopped answers keep NULL: the page reads them as "stopped" without a cause.
`conversations.temperature` and `conversations.max_new_tokens` are a conversation's own
settings; NULL means the server's defaults. Nothing existing changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("stop_reason", sa.String(length=16), nullable=True))
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("temperature", sa.Float(), nullable=True))
        batch.add_column(sa.Column("max_new_tokens", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("max_new_tokens")
        batch.drop_column("temperature")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("stop_reason")
