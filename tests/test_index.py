"""The index models, used the way the daemon will: through open_index on a real SQLite file."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from lanshare.errors import Error
from lanshare.index.db import IndexDatabaseError, head_revision, open_index, session_factory
from lanshare.index.models import Commit, Lease, Peer, Pin, PinSource, Ref, Transfer, TransferState

C1 = "a" * 64
C2 = "b" * 64
C3 = "c" * 64


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """The index on each backend: SQLite, and a live PostgreSQL (tests/postgres.py)."""
    engine = open_index(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with session_factory(engine)() as session:
        yield session


def test_commits_by_ref_newest_first_with_defaults(session: Session) -> None:
    session.add_all(
        [
            Commit(checksum=C1, ref="os/stable", timestamp=100, subject="one"),
            Commit(
                checksum=C2,
                ref="os/stable",
                parent=C1,
                timestamp=200,
                version="2.0",
                is_checkpoint=True,
                checkpoint_target="os/stable-v2",
                target_key="eos.checkpoint-target",
            ),
            Commit(checksum=C3, ref="os/stable-v2", timestamp=300, checkpoint_source=f"os/stable@{C2}"),
        ]
    )
    session.commit()

    on_stable = session.scalars(
        select(Commit).where(Commit.ref == "os/stable").order_by(Commit.timestamp.desc())
    )
    assert [c.checksum for c in on_stable] == [C2, C1]
    checkpoint = session.get_one(Commit, C2)
    assert checkpoint.is_checkpoint and checkpoint.checkpoint_target == "os/stable-v2"
    assert session.scalars(select(Commit.checksum).where(Commit.parent == C1)).all() == [C2]
    first = session.get_one(Commit, C1)
    # A freshly indexed commit is commit-only until its closure is verified, size unmeasured.
    assert (first.complete, first.is_checkpoint, first.size, first.version) == (False, False, None, None)
    assert first.last_used.tzinfo is dt.UTC

    first.complete, first.size = True, 12345
    session.commit()
    session.expunge_all()
    assert session.get_one(Commit, C1).size == 12345


def test_unknown_checkpoint_target_key_is_refused(session: Session) -> None:
    session.add(Commit(checksum=C1, timestamp=1, checkpoint_target="x", target_key="eos.bogus"))
    with pytest.raises(IntegrityError):
        session.commit()


def test_times_are_stored_and_returned_in_utc(session: Session) -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    session.add(Lease(commit=C1, holder="pull 1", expires_at=dt.datetime(2030, 1, 1, 12, 0, tzinfo=plus2)))
    session.commit()
    session.expunge_all()
    lease = session.scalars(select(Lease)).one()
    assert lease.expires_at == dt.datetime(2030, 1, 1, 10, 0, tzinfo=dt.UTC)
    assert lease.expires_at.tzinfo is dt.UTC


def test_naive_datetime_is_refused(session: Session) -> None:
    session.add(Lease(commit=C1, holder="pull 1", expires_at=dt.datetime(2030, 1, 1)))
    with pytest.raises(StatementError, match="timezone-aware"):
        session.commit()


def test_expired_leases_are_found_by_time(session: Session) -> None:
    now = dt.datetime.now(dt.UTC)
    session.add_all(
        [
            Lease(commit=C1, holder="old pull", expires_at=now - dt.timedelta(minutes=1)),
            Lease(commit=C2, holder="live pull", expires_at=now + dt.timedelta(minutes=1)),
        ]
    )
    session.commit()
    expired = session.scalars(select(Lease.holder).where(Lease.expires_at < now)).all()
    assert expired == ["old pull"]


def test_same_ref_name_in_two_collections(session: Session) -> None:
    session.add_all(
        [
            Ref(name="os/stable", commit=C1),
            Ref(name="os/stable", collection_id="com.example.Os", commit=C2),
        ]
    )
    session.commit()
    assert session.get_one(Ref, ("os/stable", "")).commit == C1
    assert session.get_one(Ref, ("os/stable", "com.example.Os")).commit == C2
    session.add(Ref(name="os/stable", commit=C3))
    with pytest.raises(IntegrityError):
        session.commit()


def test_ref_update_moves_updated_at(session: Session) -> None:
    ref = Ref(name="os/stable", commit=C1, updated_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
    session.add(ref)
    session.commit()
    ref.commit = C2
    session.commit()
    assert ref.updated_at > dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def test_pins_need_a_ref_or_a_commit(session: Session) -> None:
    session.add_all(
        [
            Pin(ref_glob="os/*", reason="fleet", source=PinSource.CONFIG),
            Pin(commit=C1, reason="field test", source=PinSource.CLI),
        ]
    )
    session.commit()
    # Stored as the plain words, so other tools reading the database see "config" and "cli".
    assert session.execute(text("SELECT source FROM pins ORDER BY id")).scalars().all() == ["config", "cli"]
    assert session.scalars(select(Pin.source).order_by(Pin.id)).all() == [PinSource.CONFIG, PinSource.CLI]

    session.add(Pin(reason="nothing", source=PinSource.CLI))
    with pytest.raises(IntegrityError):
        session.commit()


def test_peer_holdings_round_trip(session: Session) -> None:
    session.add(
        Peer(
            node_id="node-1",
            addresses=["192.0.2.7", "fe80::1"],
            port=8473,
            holdings={"os/stable": C1, "os/stable-v2": C3},
            last_rate=1.5e6,
        )
    )
    session.commit()
    session.expunge_all()
    peer = session.get_one(Peer, "node-1")
    assert peer.addresses == ["192.0.2.7", "fe80::1"]
    assert peer.holdings == {"os/stable": C1, "os/stable-v2": C3}
    assert (peer.healthy, peer.failures, peer.bytes_in, peer.bytes_out) == (True, 0, 0, 0)
    assert peer.backoff_until is None

    # JSON columns do not track in-place changes: assign a new value.
    peer.holdings = {**peer.holdings, "os/beta": C2}
    peer.bytes_in += 5 * 2**40
    session.commit()
    session.expunge_all()
    peer = session.get_one(Peer, "node-1")
    assert peer.holdings["os/beta"] == C2
    assert peer.bytes_in == 5 * 2**40


def test_transfer_lifecycle(session: Session) -> None:
    transfer = Transfer(commit=C1, ref="os/stable", source="origin", objects_total=10)
    session.add(transfer)
    session.commit()
    assert transfer.state is TransferState.RUNNING
    assert (transfer.objects_done, transfer.bytes_done, transfer.bytes_total) == (0, 0, None)

    transfer.state = TransferState.DONE
    transfer.objects_done = 10
    transfer.finished_at = dt.datetime.now(dt.UTC)
    session.commit()
    running = session.scalars(select(Transfer).where(Transfer.state == TransferState.RUNNING)).all()
    assert running == []


def test_unknown_transfer_state_is_refused(session: Session) -> None:
    session.add(Transfer(commit=C2, source="origin", state="paused"))
    with pytest.raises(StatementError, match="paused"):
        session.commit()


def test_savepoint_rolls_back_only_its_part(session: Session) -> None:
    session.add(Commit(checksum=C1, timestamp=1))
    nested = session.begin_nested()
    session.add(Commit(checksum=C2, timestamp=2))
    nested.rollback()
    session.commit()
    assert session.scalars(select(Commit.checksum)).all() == [C1]


def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = open_index(f"sqlite:///{tmp_path / 'index.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
        # NORMAL (1): WAL syncs at checkpoints, not at every commit (the index is derived data).
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
    engine.dispose()


def test_missing_state_directory_is_created(tmp_path: Path) -> None:
    db = tmp_path / "state" / "lanshare" / "index.db"
    engine = open_index(f"sqlite:///{db}")
    engine.dispose()
    assert db.is_file()


def test_in_memory_database() -> None:
    engine = open_index("sqlite://")
    with session_factory(engine)() as session:
        session.add(Commit(checksum=C1, timestamp=1))
        session.commit()
        assert session.get_one(Commit, C1).timestamp == 1
    engine.dispose()


def test_daemons_opening_together_migrate_once(database_url: str) -> None:
    url = database_url
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            open_index(url).dispose()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    engine = open_index(url)
    with engine.connect() as conn:
        versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
    engine.dispose()
    assert versions == [head_revision()]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "cannot use database URL"),
        ("nosuchdb://host/db", "cannot use database URL"),
        ("sqlite:////proc/lanshare-no-such-dir/index.db", "lanshare-no-such-dir"),
    ],
)
def test_bad_database_is_one_clear_error(url: str, message: str) -> None:
    with pytest.raises(IndexDatabaseError, match=message) as info:
        open_index(url)
    assert isinstance(info.value, Error)
