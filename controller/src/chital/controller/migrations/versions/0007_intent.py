"""Intent: a container's desired state and stop deadline, a host's drain, optional request ids

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing rows: no desired state stored (implied by their state), no stop deadline, never
    # drained. request_id becomes optional (NULL: a call made without one).
    with op.batch_alter_table("containers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("desired_state", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("stop_deadline", sa.DateTime(), nullable=True))
        batch_op.alter_column("request_id", existing_type=sa.String(length=128), nullable=True)
    with op.batch_alter_table("processes", schema=None) as batch_op:
        batch_op.alter_column("request_id", existing_type=sa.String(length=128), nullable=True)
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("drain_started", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("drain_deadline", sa.DateTime(), nullable=True))
        batch_op.add_column(
            sa.Column("drain_containers", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.alter_column("drain_containers", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("drain_containers")
        batch_op.drop_column("drain_deadline")
        batch_op.drop_column("drain_started")
    op.execute("UPDATE processes SET request_id = uid WHERE request_id IS NULL")
    with op.batch_alter_table("processes", schema=None) as batch_op:
        batch_op.alter_column("request_id", existing_type=sa.String(length=128), nullable=False)
    op.execute("UPDATE containers SET request_id = uid WHERE request_id IS NULL")
    with op.batch_alter_table("containers", schema=None) as batch_op:
        batch_op.alter_column("request_id", existing_type=sa.String(length=128), nullable=False)
        batch_op.drop_column("stop_deadline")
        batch_op.drop_column("desired_state")
