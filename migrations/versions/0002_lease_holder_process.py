"""Leases name their holder process (PID, start time, boot id, PID namespace, host).

Revision ID: 0002_lease_holder_process
Revises: 0001
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_lease_holder_process"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the holder process columns to leases (NULL on existing leases: they expire by time)."""
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("start_ticks", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("boot_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("pid_ns", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("host", sa.String(255), nullable=True))


def downgrade() -> None:
    """Drop the holder process columns."""
    with op.batch_alter_table("leases") as batch:
        for column in ("host", "pid_ns", "boot_id", "start_ticks", "pid"):
            batch.drop_column(column)
