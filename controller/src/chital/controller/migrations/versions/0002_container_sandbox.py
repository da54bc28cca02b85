"""container sandbox and effective deny list

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows get the most isolated sandbox and an unknown (empty) effective deny list; the
    # server defaults only backfill them and are dropped again, as the models have none.
    with op.batch_alter_table("containers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sandbox", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
        batch_op.add_column(
            sa.Column("effective_deny_syscalls", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
    with op.batch_alter_table("containers", schema=None) as batch_op:
        batch_op.alter_column("sandbox", server_default=None)
        batch_op.alter_column("effective_deny_syscalls", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("containers", schema=None) as batch_op:
        batch_op.drop_column("effective_deny_syscalls")
        batch_op.drop_column("sandbox")
