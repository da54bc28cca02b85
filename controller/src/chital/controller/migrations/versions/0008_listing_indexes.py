"""Listing indexes: containers by host and by state in (created, uid) order

A page of ListContainers filtered by host or by state seeks its position in one of these and
reads no more than the page; before, the database sorted every container of the host (or of the
state) for each page. (state, created, uid) replaces (state), its prefix.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Plain index operations (no batch mode): SQLite creates and drops indexes in place, without
# copying the table.
def upgrade() -> None:
    op.create_index(
        "ix_containers_host_id_created_uid", "containers", ["host_id", "created", "uid"], unique=False
    )
    op.create_index(
        "ix_containers_state_created_uid", "containers", ["state", "created", "uid"], unique=False
    )
    op.drop_index("ix_containers_state", table_name="containers")


def downgrade() -> None:
    op.create_index("ix_containers_state", "containers", ["state"], unique=False)
    op.drop_index("ix_containers_state_created_uid", table_name="containers")
    op.drop_index("ix_containers_host_id_created_uid", table_name="containers")
