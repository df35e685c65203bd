"""Cloned machines: two daemons started from one copied state directory (one node id) find each other."""

from __future__ import annotations

import shutil
from pathlib import Path

from lanshare.netns import NetnsLan
from tests.lan_daemons import LanDaemon, wait_for
from tests.netns import loopback_host  # noqa: F401 -- a fixture

# Both on lo, in a namespace holding only lo: mDNS between them stays inside it.
SHARING = '[sharing]\nlisten = "0.0.0.0:0"\ninterfaces = ["lo"]\n'
WARNING = "advertises this machine's node id"


def test_twins_from_a_copied_state_directory_get_distinct_ids_and_see_each_other(
    tmp_path: Path,
    loopback_host: NetnsLan,  # noqa: F811 -- the fixture
) -> None:
    a = LanDaemon(loopback_host, "solo", tmp_path / "a").configure(SHARING)
    a.start()
    a.stop()
    original = a.node_id
    # The image was copied, state directory and all, onto a second machine.
    b = LanDaemon(loopback_host, "solo", tmp_path / "b").configure(SHARING)
    shutil.copytree(a.state, b.state)
    assert b.node_id == original
    try:
        procs = [daemon.start().proc for daemon in (a, b)]

        def distinct_and_seen() -> bool:
            ids = a.node_id, b.node_id
            return ids[0] != ids[1] and ids[1] in a.table() and ids[0] in b.table()

        wait_for(distinct_and_seen, "the twins to take distinct node ids and find each other", timeout=120)
        # Renewed in place: the same processes, still running.
        assert [a.proc, b.proc] == procs and all(p is not None and p.poll() is None for p in procs)
    finally:
        for daemon in (a, b):
            daemon.stop()
    logs = [daemon.log.read_text() for daemon in (a, b)]
    # At least one twin noticed and renewed its id, each said so at most once, and nothing broke.
    assert sum(log.count(WARNING) for log in logs) >= 1
    assert "replaced by" in "".join(logs)
    assert all(log.count(WARNING) <= 1 for log in logs), logs
    assert all("Traceback" not in log for log in logs), logs
