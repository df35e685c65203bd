"""One download per LAN: machines switched on together fetch each object from the origin about once.

Four machines on a namespace LAN follow one origin (a plain HTTP server behind a ``tc``-shaped
link, its access log counting every object it sent).  Switched on together, they split the commit
(:mod:`lanshare.pull.fleet`); one killed mid-way, a liar serving garbage, or a machine alone must
each still end with the commit, verified.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from lanshare.netns import NetnsLan
from tests.fleet_lan import (
    SHARING_PORT,
    Origin,
    archive_objects,
    file_objects,
    holds,
    machine_config,
    publish,
)
from tests.fleet_liar import NODE_IDS
from tests.lan_daemons import LanDaemon, wait_for
from tests.netns import netns_lan_context, require_namespaces

pytestmark = pytest.mark.slow

MACHINES = ("a", "b", "c", "d")
ORIGIN_HOST = "e"
# Small enough to be cheap, big enough that a machine killed mid-way is caught with part of it.
COMMIT_BYTES, COMMIT_FILES = 4_000_000, 240
RATE = "24mbit"
DEADLINE = 90.0


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NetnsLan, Origin, str]]:
    require_namespaces()
    base = tmp_path_factory.mktemp("fleet")
    repo, commit = publish(base, COMMIT_BYTES, COMMIT_FILES)
    with netns_lan_context(5) as netns:
        origin = Origin(netns, ORIGIN_HOST, repo, base / "origin.log").start(RATE)
        yield netns, origin, commit


@pytest.fixture
def machines(lan: tuple[NetnsLan, Origin, str], tmp_path: Path) -> Iterator[Callable[[str, str], LanDaemon]]:
    """Makes a machine on a host with a config; every machine made is stopped at the end."""
    netns = lan[0]
    made: list[LanDaemon] = []

    def make(host: str, config: str) -> LanDaemon:
        machine = LanDaemon(netns, host, tmp_path / host).configure(config)
        made.append(machine)
        return machine

    yield make
    for machine in made:
        machine.terminate()
    for machine in made:
        machine.wait(30)


def launch_fleet(
    machines: Callable[[str, str], LanDaemon], config: str, hosts: Sequence[str] = MACHINES
) -> list[LanDaemon]:
    """A machine in each of ``hosts`` with ``config``, all launched at once (not waited for)."""
    fleet = [machines(host, config) for host in hosts]
    for machine in fleet:
        machine.launch()
    return fleet


def wait_all_hold(machines: list[LanDaemon], commit: str) -> None:
    for machine in machines:
        wait_for(partial(holds, machine.repo, commit), f"{machine.host} to hold the commit", DEADLINE, 0.2)


def fsck_clean(machine: LanDaemon) -> None:
    done = machine.cli("fsck", check=False)
    assert done.returncode == 0, f"fsck on {machine.host}: {done.stdout}\n{done.stderr}"


def test_four_machines_switched_on_together_fetch_each_object_about_once(
    lan: tuple[NetnsLan, Origin, str], machines: Callable[[str, str], LanDaemon]
) -> None:
    _, origin, commit = lan
    since = origin.offset()
    fleet = launch_fleet(machines, machine_config(origin))
    wait_all_hold(fleet, commit)
    for machine in fleet:
        fsck_clean(machine)
    sent = origin.objects_sent(since)
    objects = archive_objects(origin.repo)
    fetched = {path for path in sent if path in objects}
    # Every object the commit needs left the origin, and (nearly) only once for the whole LAN;
    # the commit object itself each machine fetches to verify before it starts.
    assert len(fetched) == len([p for p in objects if not p.endswith(".commitmeta")]), "objects missing"
    repeats = sum(n - 1 for path, n in sent.items() if not path.endswith((".commit", ".commitmeta")))
    assert repeats <= max(6, len(fetched) // 40), f"{repeats} repeated fetches of {len(fetched)} objects"

    # Each status page splits the commit's bytes: this machine's, and the LAN's as peers report.
    def lan_split() -> dict[str, Any] | None:
        status = json.loads(fleet[0].cli("status", "--json").stdout)
        rows = [r for r in status["savings"]["by_commit"] if r["commit"] == commit]
        return rows[0] if rows and rows[0]["lan_machines"] == len(fleet) else None

    split = wait_for(lan_split, "machine a to learn how every machine pulled the commit", 30, 1)
    assert split["origin_bytes"] + split["peer_bytes"] > 0
    lan_origin, lan_peers = split["lan_origin_bytes"], split["lan_peer_bytes"]
    assert lan_peers > 2 * lan_origin, split  # three quarters of the LAN's bytes came from peers
    # What the machines served each other, as their status pages count it per peer.
    served = [
        sum(p["bytes_out"] for p in json.loads(m.cli("status", "--json").stdout)["peers"]) for m in fleet
    ]
    assert sum(served) >= lan_peers * 0.9, (served, lan_peers)
    # A machine that stops has written it to its peers' rows (bytes_out) in its index.
    fleet[0].stop()
    assert sum(row["bytes_out"] for row in fleet[0].table().values()) >= served[0] > 0


def test_a_machine_killed_mid_share_costs_the_others_a_delay_and_finishes_once_restarted(
    lan: tuple[NetnsLan, Origin, str], machines: Callable[[str, str], LanDaemon]
) -> None:
    _, origin, commit = lan
    since = origin.offset()
    fleet = launch_fleet(machines, machine_config(origin))
    victim = fleet[-1]
    # Mid-share: some of the files in, far from all of them.
    wait_for(lambda: file_objects(victim.repo) >= COMMIT_FILES // 10, "the victim to start", DEADLINE, 0.02)
    victim.kill()
    assert not holds(victim.repo, commit)
    wait_all_hold(fleet[:-1], commit)
    victim.launch()
    wait_all_hold([victim], commit)
    for machine in fleet:
        fsck_clean(machine)
    sent = origin.objects_sent(since)
    # Far from each machine fetching everything (4x): the victim's lost work is refetched, once.
    assert sum(sent.values()) <= 2 * len(archive_objects(origin.repo)), sent.most_common(3)


def test_liars_cost_a_bounded_delay_and_the_one_serving_garbage_is_demoted(
    lan: tuple[NetnsLan, Origin, str], machines: Callable[[str, str], LanDaemon]
) -> None:
    netns, origin, commit = lan
    # Two liars on host d, both claiming to fetch the commit: one serves garbage, one never serves.
    liars = {mode: SHARING_PORT + i for i, mode in enumerate(NODE_IDS)}
    argv = [["-m", "tests.fleet_liar", str(port), commit, mode] for mode, port in liars.items()]
    procs = [netns.python("d", *a, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for a in argv]
    try:
        urls = ", ".join(f'"http://{netns["d"].address}:{port}/"' for port in liars.values())
        fleet = launch_fleet(machines, machine_config(origin, extra=f"peers = [{urls}]\n"), MACHINES[:3])
        wait_all_hold(fleet, commit)
        for machine in fleet:
            fsck_clean(machine)
            table = machine.table()
            assert table[NODE_IDS["garbage"]]["health"] == "demoted", (machine.host, table)
            # The silent one only cost a wait: its share was taken over.
            assert f"{NODE_IDS['silent']}: taking over its share" in machine.log.read_text()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


def test_a_machine_alone_fetches_everything_from_the_origin_once(
    lan: tuple[NetnsLan, Origin, str], machines: Callable[[str, str], LanDaemon]
) -> None:
    _, origin, commit = lan
    since = origin.offset()
    alone = machines("a", machine_config(origin))
    alone.launch()
    wait_all_hold([alone], commit)
    fsck_clean(alone)
    sent = origin.objects_sent(since)
    assert set(sent.values()) == {1}, sent.most_common(3)


def test_a_pull_run_by_hand_splits_the_commit_with_the_daemons_pulling_it(
    lan: tuple[NetnsLan, Origin, str], machines: Callable[[str, str], LanDaemon]
) -> None:
    _, origin, commit = lan
    since = origin.offset()
    # A's daemon follows nothing: its user runs `lanshare pull` by hand while B's daemon pulls.
    a = machines("a", machine_config(origin).replace('refs = ["os/stable"]', "refs = []"))
    b = machines("b", machine_config(origin))
    a.launch()
    b.launch()
    a.wait_listening()
    wait_for(lambda: len(a.table()) == 1, "A to discover B")
    done = a.cli("pull", "--json", "os/stable")
    result = json.loads(done.stdout)
    assert result["commit"] == commit
    wait_all_hold([a, b], commit)
    fsck_clean(a)
    by_source = result["sources"]
    assert by_source.get("origin", {}).get("objects", 0) < len(archive_objects(origin.repo))
    assert any(name != "origin" and s["objects"] for name, s in by_source.items()), by_source
    sent = origin.objects_sent(since)
    repeats = sum(n - 1 for path, n in sent.items() if not path.endswith((".commit", ".commitmeta")))
    assert repeats <= 6, sent.most_common(3)
