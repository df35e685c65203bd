"""Leases of pulls whose process is gone (SIGKILL, a crash, a reboot) stop blocking retention."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.orm import Session

from lanshare.index import holders, sync
from lanshare.index.db import open_index
from lanshare.index.holders import Holder, this_process
from lanshare.index.models import Lease, utcnow
from tests import hostile_servers as hs
from tests.conftest import build_tree, lanshare


async def _hang_on_content(
    server: hs.ArchiveServer, request: web.Request, path: str, data: bytes
) -> web.StreamResponse | None:
    """Serve metadata, never answer for a content object: the pull waits with its lease taken."""
    if path.endswith(".filez"):
        await asyncio.Event().wait()
    return None


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "lanshare.toml"
    config.write_text(
        f'[repo]\npath = "{tmp_path / "repo"}"\n'
        f'[database]\nurl = "sqlite:///{tmp_path / "index.sqlite"}"\n'
        "[trust]\nrequire_signatures = false\n"
        "[sharing]\nadvertise = false\ndiscovery = false\n"
    )
    return config


def _leases(tmp_path: Path) -> list[Lease]:
    engine = open_index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    try:
        with Session(engine) as session:
            return list(session.scalars(select(Lease)))
    finally:
        engine.dispose()


def _leased(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> set[str]:
    """The commits `prune --dry-run` keeps because a pull leases them."""
    capsys.readouterr()
    assert lanshare("prune", "--config", config, "--dry-run", "--json") == 0
    kept: dict[str, list[str]] = json.loads(capsys.readouterr().out)["kept"]
    return {c for c, reasons in kept.items() if "leased by a pull in progress" in reasons}


def test_lease_of_a_sigkilled_pull_no_longer_blocks_prune(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    publisher = tmp_path / "publisher"
    tree = build_tree(tmp_path / "tree")
    args = ("--repo", publisher, "--branch", "os/stable", "--tree", tree, "--no-xattrs")
    assert lanshare("commit", *args) == 0
    config = _config(tmp_path)
    with hs.ArchiveServer(publisher, behaviour=_hang_on_content).serve() as server:
        argv = [sys.executable, "-m", "lanshare.cli", "pull", "os/stable", "--from", server.url]
        pull = subprocess.Popen(
            [*argv, "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not (tmp_path / "index.sqlite").exists() or not _leases(tmp_path):
                assert pull.poll() is None, "the pull ended before taking its lease"
                if time.monotonic() > deadline:
                    pytest.fail("the pull took no lease within 60 s")
                time.sleep(0.1)
            (lease,) = _leases(tmp_path)
            assert lease.pid == pull.pid
            # While the pull lives, its lease counts (prune itself would wait for its repo lock).
            engine = open_index(f"sqlite:///{tmp_path / 'index.sqlite'}")
            try:
                assert sync.active_leases(engine) == {lease.commit}
                assert sync.drop_dead_leases(engine) == 0
            finally:
                engine.dispose()
        finally:
            os.kill(pull.pid, signal.SIGKILL)
            pull.wait()
    # Killed, it released nothing; prune sees the holder is gone and drops the lease.
    assert _leased(tmp_path, config, capsys) == set()
    assert _leases(tmp_path) == []


def _lease(holder: Holder) -> Lease:
    return Lease(
        commit="c" * 64,
        holder="test",
        expires_at=utcnow() + dt.timedelta(hours=1),
        pid=holder.pid,
        start_ticks=holder.start_ticks,
        boot_id=holder.boot_id,
        pid_ns=holder.pid_ns,
        host=holder.host,
    )


@pytest.mark.parametrize(
    ("change", "dead"),
    [
        ({}, False),  # this very process: alive
        ({"start_ticks": -1}, True),  # our PID, reused: another process started at another time
        ({"boot_id": "00000000-0000-0000-0000-000000000000"}, True),  # from before a reboot
        ({"host": "another-machine"}, False),  # a shared index: not ours to judge, it expires
        ({"pid_ns": -1}, False),  # another PID namespace: its PIDs mean nothing here
        ({"pid": 2**22 + 1}, True),  # above pid_max: no such process
        ({"pid": 2**22 + 1, "boot_id": "btime:1"}, True),  # no such process, whatever the boot
        ({"boot_id": "btime:1"}, False),  # a live PID, a boot that cannot be compared: kept
        ({"pid": 1, "start_ticks": None}, False),  # a live PID whose start time was not known
    ],
    ids=[
        "alive",
        "pid-reused",
        "rebooted",
        "other-host",
        "other-pid-namespace",
        "gone",
        "gone-other-boot-kind",
        "other-boot-kind",
        "no-start-time",
    ],
)
def test_dead_holders_are_told_from_live_ones(tmp_path: Path, change: dict[str, object], dead: bool) -> None:
    me = this_process()
    holder = Holder(**{**me.__dict__, **change})
    assert holder.is_dead() is dead
    engine = open_index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    try:
        with Session(engine) as session, session.begin():
            session.add(_lease(holder))
            # A lease from before holders were recorded expires by time only.
            session.add(Lease(commit="d" * 64, holder="old", expires_at=utcnow() + dt.timedelta(hours=1)))
        assert sync.active_leases(engine) == ({"d" * 64} if dead else {"c" * 64, "d" * 64})
        assert sync.drop_dead_leases(engine) == int(dead)
        with Session(engine) as session:
            assert len(session.scalars(select(Lease)).all()) == (1 if dead else 2)
    finally:
        engine.dispose()


def test_boot_time_estimates_compare_within_a_minute() -> None:
    # Where systemd hides /proc/sys (ProcSubset=pid), the boot is named by its estimated time.
    assert holders.same_boot("btime:1000", "btime:1045")
    assert not holders.same_boot("btime:1000", "btime:1200")
    assert not holders.same_kind("btime:1000", this_process().boot_id or "x")
