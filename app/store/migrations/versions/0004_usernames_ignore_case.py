"""user names unique ignoring case

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 17:30:00

"Alice" and "alice" would look like one person in every list and audit line, so the database
refuses a second name that differs only in case. Existing names that already clash stop the
upgrade with a message naming them: which account to rename is the operator's call, and
nothing is dropped or renamed here.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ux_users_username_lower"


def upgrade() -> None:
    clashes = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT id, username FROM users WHERE lower(username) IN "
                "(SELECT lower(username) FROM users GROUP BY lower(username) "
                "HAVING count(*) > 1) ORDER BY lower(username), id"
            )
        )
        .fetchall()
    )
    if clashes:
        listed = ", ".join(f"{name!r} (id {user_id})" for user_id, name in clashes)
        user_id, name = clashes[-1]
        raise RuntimeError(
            "User names must differ in more than case, but these do not: "
            f"{listed}. Rename all but one of each in the users table (for example, user id "
            f"{user_id} to '{name}-2') and start again; nothing was changed."
        )
    op.create_index(INDEX, "users", [sa.text("lower(username)")], unique=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="users")
