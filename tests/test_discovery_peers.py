"""Discovery and the peer table: health checks, peer choice, and daemons finding each other.

In-process tests run real LAN listeners on 127.0.0.1 (HTTP only, no mDNS).  mDNS runs only
inside network namespaces the tests create: one holding nothing but ``lo`` (two daemons find each
other) and a three-host namespace LAN (appearance, TXT change, goodbye, crash, hostile adverts).
Latency figures are measured by ``bench/bench_discovery.py``; here every wait has a generous deadline.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from lanshare.config import load_config
from lanshare.discovery import peers as peers_module
from lanshare.discovery.peers import HealthMonitor, PeerTable, TablePeers, health_label
from lanshare.index.db import open_index
from lanshare.index.models import Peer, utcnow
from lanshare.ostree.repo import Repo
from lanshare.plan import plan_from_config
from lanshare.pull import ProgressUpdate, PullOptions, PullResult, SourceSpec, StaticPeers, TrustPolicy, pull
from lanshare.pull.http import Timeouts
from lanshare.pull.records import PeerKey, Recorder
from lanshare.server import LanLimits, create_lan_app
from tests.conftest import build_tree, lanshare
from tests.fleet import serve_app
from tests.lan_daemons import LanDaemon, wait_for
from tests.netns import NetnsLan, loopback_host, netns_lan  # noqa: F401
from tests.test_ostree_oracle import lanshare_commit

OWN = "0" * 32
UNSIGNED = PullOptions(trust=TrustPolicy(require_signatures=False), parallel=4)


def many_files_tree(root: Path, seed: int, count: int = 150) -> Path:
    """The usual test tree plus ``count`` small distinct files: a pull big enough to spread."""
    build_tree(root, seed)
    (root / "usr" / "share").mkdir(parents=True)
    for i in range(count):
        (root / "usr" / "share" / f"f{i:03}").write_text(f"file {i} of tree {seed}\n" * (i % 7 + 1))
    return root


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Engine]:
    engine = open_index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    yield engine
    engine.dispose()


@asynccontextmanager
async def lan_listener(repo: Repo, node_id: str) -> AsyncIterator[str]:
    """A real LAN listener serving ``repo`` on 127.0.0.1 (a port of its own); yields its URL."""
    async with serve_app(create_lan_app(repo, LanLimits(), node_id)) as url:
        yield url


def served_repo(tmp_path: Path) -> tuple[Repo, str]:
    repo_path = tmp_path / "served"
    commit = lanshare_commit(
        repo_path, "os/stable", build_tree(tmp_path / "tree", 1), "--collection-id", "org.example.Os"
    )
    return Repo.open(repo_path), commit


# --- health checks and the table -------------------------------------------------------------------


def test_health_checks_record_a_static_peer_and_mark_it_down_when_it_dies(
    tmp_path: Path, index: Engine
) -> None:
    repo, commit = served_repo(tmp_path)
    node = "a" * 32
    table = PeerTable(index)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            async with lan_listener(repo, node) as url:
                monitor = HealthMonitor(table, OWN, static_urls=[url], interval=0.0, timeout=2.0)
                await monitor.check_round(session)
                (peer,) = table.peers()
                assert (peer.node_id, health_label(peer), peer.holdings) == (
                    node,
                    "up",
                    {"os/stable": commit},
                )
                assert peer.holdings_digest is not None
                # Checked again while up: still one row, still up.
                await monitor.check_round(session)
                assert [health_label(p) for p in table.peers()] == ["up"]
            # The listener is gone: down after three failed checks in a row, not before.
            for expected in ("up", "up", "down"):
                await monitor.check_round(session)
                assert [health_label(p) for p in table.peers()] == [expected]
            assert table.peers()[0].failures == 3
            assert TablePeers(f"sqlite:///{tmp_path / 'index.sqlite'}").peer_specs() == []

    asyncio.run(scenario())


def test_a_demotion_for_bad_data_outlasts_good_health_checks(tmp_path: Path, index: Engine) -> None:
    repo, _ = served_repo(tmp_path)
    node = "b" * 32
    table = PeerTable(index)
    url_db = f"sqlite:///{tmp_path / 'index.sqlite'}"

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session, lan_listener(repo, node) as url:
            monitor = HealthMonitor(table, OWN, static_urls=[url], interval=0.0)
            await monitor.check_round(session)
            assert [s.url for s in TablePeers(url_db).peer_specs()] == [url]
            # A pull caught it serving a corrupt object: the engine demotes it in the table.
            recorder = Recorder(index)
            recorder.peer_failed(PeerKey.of(node, url))
            await recorder.drain()
            await monitor.check_round(session)
            (peer,) = table.peers()
            assert health_label(peer) == "demoted"
            assert TablePeers(url_db).peer_specs() == []
            # Once the back-off is over, the next good check brings it back.
            with Session(index) as s, s.begin():
                s.get_one(Peer, node).backoff_until = utcnow() - dt.timedelta(seconds=1)
            await monitor.check_round(session)
            assert health_label(table.peers()[0]) == "up"

    asyncio.run(scenario())


def test_table_peers_rank_up_and_fast_first_and_leave_down_peers_out(tmp_path: Path, index: Engine) -> None:
    now = utcnow()
    past, future = now - dt.timedelta(minutes=1), now + dt.timedelta(minutes=5)
    rows: dict[str, dict[str, Any]] = {
        "slow": dict(healthy=True, last_rate=1e3),
        "fast": dict(healthy=True, last_rate=1e6),
        "unmeasured": dict(healthy=True, last_rate=None),
        "down": dict(healthy=False, failures=3),
        "demoted": dict(healthy=False, failures=1, backoff_until=future),
        "forgiven": dict(healthy=False, failures=1, backoff_until=past, last_rate=1e9),
    }
    with Session(index) as session, session.begin():
        for port, (name, fields) in enumerate(rows.items(), start=9000):
            session.add(Peer(node_id=name, addresses=["10.0.0.1", "10.0.0.2"], port=port, **fields))
        session.add(Peer(node_id="nowhere", addresses=[], port=1, healthy=True))
        # This machine itself, say after a pull from a fleet-wide static list that names it.
        session.add(Peer(node_id="me", addresses=["10.0.0.9"], port=1, healthy=True, last_rate=1e12))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "node-id").write_text("me\n")
    static = ("http://192.0.2.7:8089/",)
    specs = TablePeers(f"sqlite:///{tmp_path / 'index.sqlite'}", static, tmp_path / "state").peer_specs()
    order = {9000 + i: name for i, name in enumerate(rows)}
    names = [order.get(int(s.url.rsplit(":", 1)[1].rstrip("/")), s.url) for s in specs]
    assert names == ["fast", "slow", "unmeasured", "forgiven", static[0]]
    assert all(s.kind == "peer" for s in specs)
    assert specs[0].url == "http://10.0.0.1:9001/"


def test_without_a_daemon_the_table_is_neither_read_nor_created(tmp_path: Path) -> None:
    db = tmp_path / "state" / "index.sqlite"
    assert TablePeers(f"sqlite:///{db}", ("http://192.0.2.7:8089/",)).peer_specs() == [
        SourceSpec("http://192.0.2.7:8089/", "peer")
    ]
    assert not db.exists() and not db.parent.exists()


def test_garbage_info_is_ignored_and_logged_once(
    tmp_path: Path, index: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    bodies = {
        "/a/": b"not json",
        "/b/": json.dumps({"refs": {}}).encode(),  # no node id
        "/c/": json.dumps({"node_id": "x" * 500, "refs": {}}).encode(),
        "/d/": json.dumps({"node_id": "ok", "refs": ["not", "a", "table"]}).encode(),
        "/e/": b"[" * 5_000_000,  # larger than an info document may be
    }

    async def info(request: web.Request) -> web.Response:
        return web.Response(body=bodies[f"/{request.match_info['prefix']}/"], content_type="application/json")

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/{prefix}/lanshare/v1/info", info)
        async with serve_app(app) as url, aiohttp.ClientSession() as session:
            peers = [url.rstrip("/") + p for p in bodies]
            monitor = HealthMonitor(PeerTable(index), OWN, peers, interval=0.0)
            for _ in range(3):
                await monitor.check_round(session)

    with caplog.at_level(logging.DEBUG, logger="lanshare.discovery.peers"):
        asyncio.run(scenario())
    assert PeerTable(index).peers() == []
    records = [r for r in caplog.records if r.name == "lanshare.discovery.peers"]
    # One warning per bad peer, however often it was checked; the repeats went to DEBUG.
    assert len([r for r in records if r.levelno == logging.WARNING]) == len(bodies)
    assert len([r for r in records if r.levelno == logging.DEBUG]) == 2 * len(bodies)


# --- peer choice in the pull engine ----------------------------------------------------------------


def test_pull_prefers_peers_holding_the_whole_commit_and_spreads_across_them(tmp_path: Path) -> None:
    origin = tmp_path / "x1"
    commit = lanshare_commit(origin, "os/stable", many_files_tree(tmp_path / "tree", 3))
    shutil.copytree(origin, tmp_path / "x2")
    # Y has every object but says the commit is only partly there (.commitpartial): it is asked last.
    shutil.copytree(origin, tmp_path / "y")
    Repo.open(tmp_path / "y").mark_partial(commit)
    client = Repo.init(tmp_path / "client")

    async def scenario() -> dict[str, int]:
        async with (
            lan_listener(Repo.open(tmp_path / "y"), "y" * 32) as y,
            lan_listener(Repo.open(tmp_path / "x1"), "1" * 32) as x1,
            lan_listener(Repo.open(tmp_path / "x2"), "2" * 32) as x2,
        ):
            plan = [SourceSpec(y, "peer"), SourceSpec(x1, "peer"), SourceSpec(x2, "peer")]
            result = await pull(client, commit, plan, options=UNSIGNED)
        return {name.split()[0]: stats.objects for name, stats in result.sources.items()}

    served = asyncio.run(scenario())
    assert set(served) == {"1" * 32, "2" * 32}, served
    assert all(count >= 20 for count in served.values()), served
    assert client.missing_objects(commit) == [] and not client.is_partial(commit)


def test_a_spread_pull_finishes_from_the_other_peer_when_one_stops_half_way(tmp_path: Path) -> None:
    origin = tmp_path / "x1"
    commit = lanshare_commit(origin, "os/stable", many_files_tree(tmp_path / "tree", 4))
    shutil.copytree(origin, tmp_path / "x2")
    client = Repo.init(tmp_path / "client")

    async def scenario() -> tuple[PullResult, int]:
        runners = []
        urls = []
        for name, node in (("x1", "1" * 32), ("x2", "2" * 32)):
            runner = web.AppRunner(create_lan_app(Repo.open(tmp_path / name), LanLimits(), node))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            runners.append(runner)
            urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}/")
        stopping: list[asyncio.Task[None]] = []
        stopped_at = 0

        def progress(update: ProgressUpdate) -> None:
            nonlocal stopped_at
            # A third of the way into the files, X1 goes away (as a machine shutting down would).
            if update.phase == "content" and update.objects_done >= 50 and not stopping:
                stopped_at = update.objects_done
                stopping.append(asyncio.get_running_loop().create_task(runners[0].cleanup()))

        try:
            # A request X1 took but never answers is abandoned after Timeouts.read: 30 s by default
            # (libostree's), 3 s here; what is tested is that the pull goes on from X2.
            options = PullOptions(
                trust=TrustPolicy(require_signatures=False), parallel=1, timeouts=Timeouts(read=3.0)
            )
            plan = [SourceSpec(url, "peer") for url in urls]
            result = await pull(client, commit, plan, options=options, progress=progress)
            await asyncio.gather(*stopping)
        finally:
            await runners[1].cleanup()
        return result, stopped_at

    result, stopped_at = asyncio.run(scenario())
    served = {name.split()[0]: stats.objects for name, stats in result.sources.items()}
    assert served.get("1" * 32, 0) > 0 and served.get("2" * 32, 0) > 0, served
    assert 0 < stopped_at < result.objects_fetched  # X1 stopped while the pull was under way
    assert client.missing_objects(commit) == [] and not client.is_partial(commit)


# --- daemons on namespaces -------------------------------------------------------------------------

DAEMON_CONFIG = """collection_id = "org.example.Os"
[trust]
require_signatures = false
[sharing]
listen = "{listen}"
interfaces = ["{interface}"]
[status]
listen = "127.0.0.1:0"
"""


def make_daemon(
    lan: NetnsLan, host: str, base: Path, listen: str, interface: str, tree_seed: int
) -> LanDaemon:
    """A daemon whose repository holds one commit on a ref of its own."""
    d = LanDaemon(lan, host, base).configure(DAEMON_CONFIG.format(listen=listen, interface=interface))
    lanshare_commit(
        d.repo, f"os/{base.name}", build_tree(base / "tree", tree_seed), "--collection-id", "org.example.Os"
    )
    return d


def lists_with_holdings(me: LanDaemon, other: LanDaemon, ref: str, commit: str | None) -> bool:
    """Whether ``me``'s peer table lists ``other`` holding ``ref`` at ``commit``."""
    row = me.table().get(other.node_id)
    return row is not None and row["holdings"].get(ref) == commit


def health_is(me: LanDaemon, other: LanDaemon, health: str) -> bool:
    """Whether ``me``'s peer table gives ``other`` this health."""
    row = me.table().get(other.node_id)
    return row is not None and row["health"] == health


def test_two_daemons_on_loopback_discover_each_other_and_their_holdings(
    tmp_path: Path,
    loopback_host: NetnsLan,  # noqa: F811
) -> None:
    a = make_daemon(loopback_host, "solo", tmp_path / "a", "127.0.0.1:0", "lo", 1)
    b = make_daemon(loopback_host, "solo", tmp_path / "b", "127.0.0.1:0", "lo", 2)
    b.launch()
    a.start()
    # A third machine with mDNS switched off knows A only as a static peer.
    a_url = f"http://{(a.state / 'lan-address').read_text().strip()}/"
    quiet = f'advertise = false\ndiscovery = false\npeers = ["{a_url}"]\n'
    y = make_daemon(loopback_host, "solo", tmp_path / "y", "127.0.0.1:0", "lo", 3)
    y.config.write_text(y.config.read_text().replace("[sharing]\n", f"[sharing]\n{quiet}"))
    for d in (y.launch(), b):
        d.wait_listening()

    for me, other, ref in ((a, b, "os/b"), (b, a, "os/a"), (y, a, "os/a")):
        want = Repo.open(other.repo).read_ref(ref)
        check = functools.partial(lists_with_holdings, me, other, ref, want)
        wait_for(check, f"{me.base.name} to list {other.base.name} with {ref} at {want}")
    for me, other, ref in ((a, b, "os/b"), (b, a, "os/a")):
        listed = me.peers()  # what `lanshare peers --json` prints
        assert listed[other.node_id]["holdings"][ref] == Repo.open(other.repo).read_ref(ref)
        assert listed[other.node_id]["health"] == "up"
        assert me.node_id not in listed and y.node_id not in listed  # never itself; Y is silent

    # A crashes: both the machine that found it by mDNS and the one that lists it mark it down.
    a.kill()
    for me in (b, y):
        wait_for(functools.partial(health_is, me, a, "down"), f"{me.base.name} to mark A down")


FAKE_ADVERTS = r"""
import asyncio, sys
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf
from lanshare.discovery.txt import LanshareTxt, encode_lanshare_txt

def txt(node: str) -> bytes:
    return encode_lanshare_txt(LanshareTxt(node_id=node, holdings="0" * 32))

ADVERTS = [
    # name, TXT, addresses, port
    ("garbage", b"\x05v=1\x00\xff\x10nonsense", ["10.123.0.3"], 8089),
    ("oversized", b"".join(bytes([250]) + b"x=" + b"y" * 248 for _ in range(4)), ["10.123.0.3"], 8089),
    ("nobody-there", txt("c" * 32), ["10.123.0.99"], 8089),
    ("closed-port", txt("d" * 32), ["10.123.0.3"], 9),
    ("answers-as-someone-else", txt("e" * 32), [sys.argv[1]], int(sys.argv[2])),
]

async def main() -> None:
    zc = AsyncZeroconf(interfaces=["10.123.0.3"])
    infos = [
        AsyncServiceInfo("_lanshare._tcp.local.", f"{name}._lanshare._tcp.local.", port=port,
                         properties=text, server=f"{name}.local.", parsed_addresses=addresses)
        for name, text, addresses, port in ADVERTS
    ]
    # Probed together (one round of ~1.2 s), then their announcements awaited.
    await asyncio.gather(*await asyncio.gather(*(zc.async_register_service(i) for i in infos)))
    print("registered", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_namespace_lan_appearance_txt_change_goodbye_crash_and_hostile_adverts(
    tmp_path: Path,
    netns_lan: NetnsLan,  # noqa: F811
) -> None:
    a = make_daemon(netns_lan, "a", tmp_path / "a", "0.0.0.0:8089", "eth0", 1)
    b = make_daemon(netns_lan, "b", tmp_path / "b", "0.0.0.0:8089", "eth0", 2)
    # Host c advertises junk, and addresses where nobody (or somebody else) answers.
    fake = netns_lan.python("c", "-c", FAKE_ADVERTS, "10.123.0.1", "8089", stdout=subprocess.PIPE)
    for d in (b.launch(), a.launch()):
        d.wait_listening()
    assert fake.stdout is not None and fake.stdout.readline().strip() == b"registered"
    row = wait_for(lambda: b.table().get(a.node_id), "B to discover A")
    assert row["addresses"] == ["10.123.0.1"] and row["port"] == 8089 and row["health"] == "up"
    first = row["holdings"]["os/a"]

    # A's holdings change: its advert's TXT changes and B fetches the new holdings.
    lanshare_commit(a.repo, "os/a", build_tree(tmp_path / "tree-a2", 7))
    new = Repo.open(a.repo).read_ref("os/a")
    assert new != first
    wait_for(lambda: b.table()[a.node_id]["holdings"].get("os/a") == new, "B to see A's new holdings")

    # B noticed every one of c's adverts and left each out of its table.

    def warnings() -> list[str]:
        return [line for line in b.log.read_text().splitlines() if line.startswith("WARNING")]

    def warned(name: str, reason: str) -> bool:
        return any(f"'{name}." in line and reason in line for line in warnings())

    wait_for(lambda: warned("garbage", "bad TXT record"), "B to reject the garbage TXT")
    wait_for(lambda: warned("oversized", "bad TXT record"), "B to reject the oversized TXT")
    wait_for(lambda: warned("nobody-there", "does not answer"), "B to give up on an unreachable address")
    wait_for(lambda: warned("answers-as-someone-else", "does not answer"), "B to reject a lying address")
    listed = b.peers()  # `lanshare peers --json`: A alone, with its new holdings
    assert set(listed) == {a.node_id} and listed[a.node_id]["holdings"]["os/a"] == new

    # A stops gracefully: its goodbye removes it from B's table.
    a.stop()
    wait_for(lambda: a.node_id not in b.table(), "B to drop A after its goodbye")

    # A comes back, then crashes: no goodbye, so B's health checks mark it down.
    a.start()
    wait_for(lambda: b.table().get(a.node_id, {}).get("health") == "up", "B to see A again")
    a.kill()
    wait_for(lambda: b.table()[a.node_id]["health"] == "down", "B to mark the crashed A down", timeout=60)
    assert b.peers()[a.node_id]["failures"] >= 3
    # B kept retrying the unreachable adverts all along, but logged each at WARNING only once.
    for name in ("garbage", "oversized", "nobody-there", "closed-port", "answers-as-someone-else"):
        assert sum(f"'{name}." in line for line in warnings()) <= 1, (name, warnings())
    assert set(b.table()) == {a.node_id}
    fake.send_signal(signal.SIGKILL)
    b.stop()
    assert b.proc is not None and b.proc.returncode == 0, b.log.read_text()[-3000:]


# --- configuration: the discovery switch and static peers ------------------------------------------


def test_the_discovery_switch_chooses_the_peer_table_or_static_peers_alone(tmp_path: Path) -> None:
    static = '[sharing]\npeers = ["http://192.0.2.7:8089"]\n'
    config = tmp_path / "on.toml"
    config.write_text(f'[repo]\npath = "{tmp_path / "repo"}"\n{static}')
    (lan,) = plan_from_config(load_config(config))
    assert isinstance(lan, TablePeers) and lan.static_urls == ("http://192.0.2.7:8089",)
    config.write_text(f'[repo]\npath = "{tmp_path / "repo"}"\n{static}discovery = false\n')
    (lan,) = plan_from_config(load_config(config))
    assert isinstance(lan, StaticPeers)
    assert [s.url for s in lan.peer_specs()] == ["http://192.0.2.7:8089"]


def test_a_flood_of_adverts_waits_its_turn_and_never_crowds_out_an_honest_one() -> None:
    # The resolution itself is replaced by a gate (what it does is covered by the LAN tests above):
    # this checks only the browser's bookkeeping when adverts outnumber the resolve slots.
    from zeroconf import ServiceStateChange

    from lanshare.discovery import browse
    from lanshare.discovery.advertise import LANSHARE_SERVICE

    resolved: list[str] = []

    async def scenario() -> None:
        gate = asyncio.Event()
        browser = browse.PeerBrowser(None, None, None, "me", None)  # type: ignore[arg-type]

        async def resolve(name: str) -> None:
            await gate.wait()
            resolved.append(name)

        browser._resolve = resolve  # type: ignore[method-assign]
        names = [f"fake{i}._lanshare._tcp.local." for i in range(browse.MAX_RESOLVING + 100)]
        for name in [*names, "honest._lanshare._tcp.local."]:
            browser._on_change(None, LANSHARE_SERVICE, name, ServiceStateChange.Added)  # type: ignore[arg-type]
        assert len(browser._busy) == browse.MAX_RESOLVING  # bounded work at once
        gate.set()
        while browser._tasks:
            await asyncio.gather(*list(browser._tasks))

    asyncio.run(scenario())
    assert "honest._lanshare._tcp.local." in resolved
    assert len(resolved) == browse.MAX_RESOLVING + 101


def test_a_command_waits_for_a_young_daemon_to_discover_and_says_when_none_was_found(
    tmp_path: Path, index: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(peers_module, "DISCOVERY_WAIT", 1.0)
    state = tmp_path / "state"
    state.mkdir()
    url_db = f"sqlite:///{tmp_path / 'index.sqlite'}"
    # No daemon runs here: nothing to wait for, and the message says so.
    assert TablePeers(url_db, (), state).peer_specs() == []
    assert "no lanshare daemon runs here" in TablePeers(url_db, (), state).why_empty()
    # A daemon that just started: the command waits (up to DISCOVERY_WAIT) for discovery.
    (state / "lan-address").write_text("0.0.0.0:8089\n")
    started = time.monotonic()
    assert TablePeers(url_db, (), state).peer_specs() == []
    assert time.monotonic() - started >= 0.5
    # `lanshare pull` with discovery on and no origin: the error says what discovery found.
    config = tmp_path / "lanshare.toml"
    config.write_text(f'[repo]\npath = "{tmp_path / "repo"}"\n[database]\nurl = "{url_db}"\n')
    monkeypatch.setenv("LANSHARE_STATE_DIR", str(state))
    assert lanshare("pull", "os/stable", "--config", config) != 0
    err = capsys.readouterr().err
    assert "no peer has been discovered yet (the daemon has looked for" in err, err
