"""Initial schema: commits, refs, pins, leases, peers, transfers.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types are spelled out here, not imported from lanshare.index.models: a migration describes the
# schema as it was at its revision, whatever the models become later.
CHECKSUM = sa.String(64)
REF = sa.String(512)
NAME = sa.String(255)
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create every table of the index."""
    op.create_table(
        "commits",
        sa.Column("checksum", CHECKSUM, nullable=False),
        sa.Column("ref", REF, nullable=True),
        sa.Column("parent", CHECKSUM, nullable=True),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("version", NAME, nullable=True),
        sa.Column("subject", sa.Text(), server_default="", nullable=False),
        sa.Column("is_checkpoint", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("checkpoint_target", REF, nullable=True),
        sa.Column("target_key", sa.String(32), nullable=True),
        sa.Column("checkpoint_source", sa.String(577), nullable=True),
        sa.Column("complete", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("signed_by", NAME, nullable=True),
        sa.Column("last_used", TIME, nullable=False),
        sa.Column("indexed_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("checksum", name=op.f("pk_commits")),
        sa.CheckConstraint(
            "target_key IN ('eos.checkpoint-target', 'ostree.endoflife-rebase')",
            name=op.f("ck_commits_target_key"),
        ),
    )
    op.create_index(op.f("ix_commits_ref_timestamp"), "commits", ["ref", "timestamp"])
    op.create_index(op.f("ix_commits_parent"), "commits", ["parent"])
    op.create_index(op.f("ix_commits_last_used"), "commits", ["last_used"])

    op.create_table(
        "refs",
        sa.Column("name", REF, nullable=False),
        sa.Column("collection_id", NAME, server_default="", nullable=False),
        sa.Column("commit", CHECKSUM, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", "collection_id", name=op.f("pk_refs")),
    )
    op.create_index(op.f("ix_refs_commit"), "refs", ["commit"])

    op.create_table(
        "pins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ref_glob", REF, nullable=True),
        sa.Column("commit", CHECKSUM, nullable=True),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pins")),
        sa.CheckConstraint(
            'ref_glob IS NOT NULL OR "commit" IS NOT NULL', name=op.f("ck_pins_ref_or_commit")
        ),
        sa.CheckConstraint("source IN ('config', 'cli')", name=op.f("ck_pins_pin_source")),
    )

    op.create_table(
        "leases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("commit", CHECKSUM, nullable=False),
        sa.Column("holder", NAME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leases")),
    )
    op.create_index(op.f("ix_leases_commit"), "leases", ["commit"])
    op.create_index(op.f("ix_leases_expires_at"), "leases", ["expires_at"])

    op.create_table(
        "peers",
        sa.Column("node_id", NAME, nullable=False),
        sa.Column("addresses", sa.JSON(), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("collection_id", NAME, nullable=True),
        sa.Column("last_seen", TIME, nullable=False),
        sa.Column("healthy", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("backoff_until", TIME, nullable=True),
        sa.Column("bytes_in", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("holdings", sa.JSON(), nullable=False),
        sa.Column("holdings_digest", CHECKSUM, nullable=True),
        sa.Column("newest_checkpoint", CHECKSUM, nullable=True),
        sa.Column("last_rate", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_peers")),
    )

    op.create_table(
        "transfers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("commit", CHECKSUM, nullable=False),
        sa.Column("ref", REF, nullable=True),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("objects_done", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("objects_total", sa.Integer(), nullable=True),
        sa.Column("bytes_done", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("bytes_total", sa.BigInteger(), nullable=True),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transfers")),
        sa.CheckConstraint(
            "state IN ('running', 'done', 'failed')", name=op.f("ck_transfers_transfer_state")
        ),
    )
    op.create_index(op.f("ix_transfers_state"), "transfers", ["state"])
    op.create_index(op.f("ix_transfers_started_at"), "transfers", ["started_at"])


def downgrade() -> None:
    """Drop every table of the index: it holds nothing the repository cannot give back."""
    op.drop_table("transfers")
    op.drop_table("peers")
    op.drop_table("leases")
    op.drop_table("pins")
    op.drop_table("refs")
    op.drop_table("commits")
