"""Where pulled bytes came from: origin and peer bytes per transfer; what each peer reports it pulled.

Revision ID: 0003_fleet_bytes
Revises: 0002_lease_holder_process
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_fleet_bytes"
down_revision: str | None = "0002_lease_holder_process"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the byte split of each transfer and the peers' own reports."""
    with op.batch_alter_table("transfers") as batch:
        batch.add_column(
            sa.Column("bytes_origin", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
        batch.add_column(
            sa.Column("bytes_peers", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
    with op.batch_alter_table("peers") as batch:
        batch.add_column(sa.Column("pulled", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Drop them again."""
    with op.batch_alter_table("peers") as batch:
        batch.drop_column("pulled")
    with op.batch_alter_table("transfers") as batch:
        batch.drop_column("bytes_peers")
        batch.drop_column("bytes_origin")
