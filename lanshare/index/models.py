"""SQLAlchemy models of the index: what the repository holds, what must be kept, and who is around.

The index is derived from the repository on disk and can be rebuilt from it (`lanshare reindex`),
so it carries no foreign keys between tables: pins, leases and transfers name commits that are not
(yet) in the repository, and a commit's parent is often beyond the history we hold.

Every wall-clock time is a timezone-aware UTC :class:`~datetime.datetime`; a commit's own
timestamp is an integer (Unix seconds), as OSTree stores it.  The schema only uses types that
mean the same on SQLite and PostgreSQL, and every change to it is an Alembic migration in the
top-level ``migrations/`` directory.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Enum,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

CHECKSUM_LENGTH = 64
REF_LENGTH = 512
NAME_LENGTH = 255

# Named constraints let Alembic (and SQLite batch mode, which recreates tables) find them again.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

CHECKPOINT_TARGET_KEYS = ("eos.checkpoint-target", "ostree.endoflife-rebase")


def utcnow() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime, stored as such on every backend."""

    # SQLite keeps no zone and would hand back naive values; PostgreSQL keeps it.  Normalising
    # to UTC both ways makes values compare and sort the same everywhere.
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        """Reject naive datetimes and store aware ones in UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: index times must be timezone-aware")
        value = value.astimezone(dt.UTC)
        return value if dialect.name != "sqlite" else value.replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        """Return an aware UTC datetime whatever the backend kept."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class PinSource(enum.StrEnum):
    """Where a pin comes from: the config file (re-synced at start) or `lanshare pin`."""

    CONFIG = "config"
    CLI = "cli"


class TransferState(enum.StrEnum):
    """The life of a pull."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def _string_enum(cls: type[enum.StrEnum], name: str) -> Enum:
    # A VARCHAR plus CHECK, not a native enum type: portable, and on PostgreSQL no type to
    # create and drop in migrations.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    """Declarative base of the index models."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        dict[str, str]: JSON(),
        list[str]: JSON(),
    }


class Commit(Base):
    """A commit whose commit object is in the repository, with what OSTree metadata says of it."""

    __tablename__ = "commits"

    checksum: Mapped[str] = mapped_column(String(CHECKSUM_LENGTH), primary_key=True)
    ref: Mapped[str | None] = mapped_column(String(REF_LENGTH))
    parent: Mapped[str | None] = mapped_column(String(CHECKSUM_LENGTH))
    timestamp: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    subject: Mapped[str] = mapped_column(Text, default="", server_default="")
    # lanshare.checkpoint: deploy this commit before anything newer on its ref.
    is_checkpoint: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The ref to continue on after this commit, and which metadata key said so.
    checkpoint_target: Mapped[str | None] = mapped_column(String(REF_LENGTH))
    target_key: Mapped[str | None] = mapped_column(String(32))
    # lanshare.checkpoint-source on the first commit of a new ref: "oldref@commit".
    checkpoint_source: Mapped[str | None] = mapped_column(String(REF_LENGTH + 1 + CHECKSUM_LENGTH))
    # False while only the commit object is held (.commitpartial): its tree may be missing.
    complete: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Bytes of the commit's closure on disk; None until it has been measured.
    size: Mapped[int | None] = mapped_column(BigInteger)
    signed_by: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    last_used: Mapped[dt.datetime] = mapped_column(default=utcnow)
    indexed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        CheckConstraint(
            "target_key IN ('eos.checkpoint-target', 'ostree.endoflife-rebase')", name="target_key"
        ),
        Index(None, "ref", "timestamp"),
        Index(None, "parent"),
        Index(None, "last_used"),
    )

    def __repr__(self) -> str:
        return f"<Commit {self.checksum[:12]} ref={self.ref!r} checkpoint={self.is_checkpoint}>"


class Ref(Base):
    """A ref in the repository (``refs/heads`` or ``refs/mirrors/<collection_id>``)."""

    __tablename__ = "refs"

    name: Mapped[str] = mapped_column(String(REF_LENGTH), primary_key=True)
    # "" rather than NULL for a ref without a collection: a primary key column cannot be NULL.
    collection_id: Mapped[str] = mapped_column(
        String(NAME_LENGTH), primary_key=True, default="", server_default=""
    )
    commit: Mapped[str] = mapped_column(String(CHECKSUM_LENGTH))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (Index(None, "commit"),)

    def __repr__(self) -> str:
        return f"<Ref {self.collection_id}:{self.name} -> {self.commit[:12]}>"


class Pin(Base):
    """An admin pin: a ref glob or a commit that retention must keep."""

    __tablename__ = "pins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref_glob: Mapped[str | None] = mapped_column(String(REF_LENGTH))
    commit: Mapped[str | None] = mapped_column(String(CHECKSUM_LENGTH))
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    source: Mapped[PinSource] = mapped_column(_string_enum(PinSource, "pin_source"))

    __table_args__ = (
        # "commit" is quoted: COMMIT is an SQL keyword (SQLite rejects it bare in some places).
        CheckConstraint('ref_glob IS NOT NULL OR "commit" IS NOT NULL', name="ref_or_commit"),
    )

    def __repr__(self) -> str:
        return f"<Pin {self.id} ref={self.ref_glob!r} commit={self.commit!r} ({self.source})>"


class Lease(Base):
    """A commit a pull in progress needs kept until it finishes or the lease expires."""

    __tablename__ = "leases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    commit: Mapped[str] = mapped_column(String(CHECKSUM_LENGTH))
    holder: Mapped[str] = mapped_column(String(NAME_LENGTH))
    expires_at: Mapped[dt.datetime]
    # The holder process (see lanshare.index.holders), so that a lease of a pull that was killed
    # is dropped at once instead of blocking prune until it expires.  NULL on leases from before.
    pid: Mapped[int | None] = mapped_column(Integer)
    start_ticks: Mapped[int | None] = mapped_column(BigInteger)
    boot_id: Mapped[str | None] = mapped_column(String(36))
    pid_ns: Mapped[int | None] = mapped_column(BigInteger)
    host: Mapped[str | None] = mapped_column(String(NAME_LENGTH))

    __table_args__ = (Index(None, "commit"), Index(None, "expires_at"))

    def __repr__(self) -> str:
        return f"<Lease {self.id} {self.commit[:12]} by {self.holder!r} until {self.expires_at}>"


class Peer(Base):
    """A lanshare daemon seen on the LAN (mDNS) or configured as a static peer."""

    __tablename__ = "peers"

    node_id: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    # Host addresses (IPv4/IPv6 literals), best first; all share one port.
    addresses: Mapped[list[str]] = mapped_column(default=list)
    port: Mapped[int] = mapped_column(Integer)
    collection_id: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    last_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)
    healthy: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    backoff_until: Mapped[dt.datetime | None]
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    # Ref name -> commit checksum, as the peer's /lanshare/v1/info reported it.
    holdings: Mapped[dict[str, str]] = mapped_column(default=dict)
    holdings_digest: Mapped[str | None] = mapped_column(String(CHECKSUM_LENGTH))
    newest_checkpoint: Mapped[str | None] = mapped_column(String(CHECKSUM_LENGTH))
    # Bytes per second of the last transfer from this peer, to rank peers.
    last_rate: Mapped[float | None] = mapped_column(Float)
    # Commit -> {"origin": bytes, "peers": bytes} the peer says its recent pulls took (its info's
    # "pulled"), for the LAN-wide origin/peer split on the status page.
    pulled: Mapped[dict[str, Any] | None] = mapped_column(JSON())

    def __repr__(self) -> str:
        return f"<Peer {self.node_id} {self.addresses}:{self.port} healthy={self.healthy}>"


class Transfer(Base):
    """A pull of a commit's closure, running or finished, for the status page."""

    __tablename__ = "transfers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    commit: Mapped[str] = mapped_column(String(CHECKSUM_LENGTH))
    ref: Mapped[str | None] = mapped_column(String(REF_LENGTH))
    # "origin", a peer's node id, or a URL given with --from.
    source: Mapped[str] = mapped_column(String(1024))
    state: Mapped[TransferState] = mapped_column(
        _string_enum(TransferState, "transfer_state"), default=TransferState.RUNNING
    )
    objects_done: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    objects_total: Mapped[int | None] = mapped_column(Integer)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    bytes_total: Mapped[int | None] = mapped_column(BigInteger)
    # Of bytes_done, what came from the origin (any non-peer source) and from LAN peers.
    bytes_origin: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    bytes_peers: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index(None, "state"), Index(None, "started_at"))

    def __repr__(self) -> str:
        return f"<Transfer {self.id} {self.commit[:12]} from {self.source!r} {self.state}>"
