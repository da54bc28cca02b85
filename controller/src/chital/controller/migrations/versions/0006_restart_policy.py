"""container restart policy, restart count and next attempt

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing containers are never restarted (the behaviour they were created with); the server
    # defaults only backfill them and are dropped again, as the models have none.
    with op.batch_alter_table("containers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("restart_policy", sa.String(length=16), nullable=False, server_default="never")
        )
        batch_op.add_column(
            sa.Column("max_restarts", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch_op.add_column(
            sa.Column("restart_count", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch_op.add_column(sa.Column("restart_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("containers", schema=None) as batch_op:
        batch_op.alter_column("restart_policy", server_default=None)
        batch_op.alter_column("max_restarts", server_default=None)
        batch_op.alter_column("restart_count", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("containers", schema=None) as batch_op:
        batch_op.drop_column("restart_at")
        batch_op.drop_column("restart_count")
        batch_op.drop_column("max_restarts")
        batch_op.drop_column("restart_policy")
