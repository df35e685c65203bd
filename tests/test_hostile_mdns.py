"""A hostile mDNS neighbour, inside a network namespace of the test's own (loopback only).

tests/test_discovery_peers.py already shows single hostile adverts (garbage and oversized TXT,
addresses where nobody or somebody else answers) being ignored.  Here one neighbour does it at
scale and adds the rest of the issue's list, all at once:

- 2,000 fake ``_lanshare._tcp`` services with well-formed TXT pointing where nothing answers,
  and 200 with garbage TXT (answered from its registry, announced without the 1.2 s probing);
- an ``_ostree_repo._tcp`` advert whose bloom filter is all ones (it claims every ref);
- a liar: a well-formed advert and ``/lanshare/v1/info`` claiming the honest peer's holdings,
  serving random bytes for every object.

The victim daemon must stay responsive (LAN and status listeners answer), find the honest peer,
keep the fakes out of its peer table, keep its journal and memory bounded, and ``lanshare pull``
must complete, verified, from the honest peer.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import build_tree
from tests.lan_daemons import LanDaemon, wait_for
from tests.netns import NetnsLan, loopback_host  # noqa: F401
from tests.test_ostree_oracle import lanshare_commit

FAKES = 2000
GARBAGE = 200
LIAR = "f" * 32

CONFIG = """collection_id = "org.example.Os"
[trust]
require_signatures = false
[sharing]
listen = "127.0.0.1:0"
interfaces = ["lo"]
[status]
listen = "127.0.0.1:0"
"""

NEIGHBOUR = r"""
import asyncio, os, random, sys
from pathlib import Path
from aiohttp import web
from zeroconf import ServiceInfo
from zeroconf.asyncio import AsyncZeroconf
from lanshare import wire
from lanshare.discovery.txt import (
    HOLDINGS_DIGITS, LanshareTxt, OstreeRepoTxt, encode_lanshare_txt, encode_ostree_txt,
)
from lanshare.ostree.repo import Repo
from lanshare.server.holdings import compute_info

honest_repo, fakes, garbage, liar_id = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
LANSHARE, OSTREE = "_lanshare._tcp.local.", "_ostree_repo._tcp.local."
rng = random.Random(7)

async def main() -> None:
    # The liar: the honest peer's holdings under its own node id, random bytes for every object.
    doc = compute_info(Repo.open(honest_repo), liar_id)
    async def info(request): return web.json_response(doc)
    async def batch(request): return web.Response(body=os.urandom(4096), content_type=wire.BATCH_CONTENT_TYPE)
    async def anything(request): return web.Response(body=os.urandom(2048))
    app = web.Application()
    app.router.add_get("/lanshare/v1/info", info)
    app.router.add_post("/lanshare/v1/objects", batch)
    app.router.add_get("/{path:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    liar_port = runner.addresses[0][1]

    def lanshare_txt(node: str, digest: str) -> bytes:
        return encode_lanshare_txt(LanshareTxt(node_id=node, holdings=digest[:HOLDINGS_DIGITS],
                                               collection_id="org.example.Os"))

    infos = [ServiceInfo(LANSHARE, f"liar.{LANSHARE}", port=liar_port, server="liar.local.",
                         properties=lanshare_txt(liar_id, doc["holdings_digest"]),
                         parsed_addresses=["127.0.0.1"])]
    for i in range(fakes):
        node = rng.randbytes(16).hex()
        infos.append(ServiceInfo(LANSHARE, f"fake{i}.{LANSHARE}", port=rng.choice([9, 1, 7]),
                                 server=f"fake{i}.local.", properties=lanshare_txt(node, node * 2),
                                 parsed_addresses=["127.0.0.1"]))
    for i in range(garbage):
        junk = rng.randbytes(rng.randint(1, 300))
        infos.append(ServiceInfo(LANSHARE, f"junk{i}.{LANSHARE}", port=8089, server=f"junk{i}.local.",
                                 properties=junk, parsed_addresses=["127.0.0.1"]))
    all_ones = OstreeRepoTxt(bloom=b"\xff" * 250, k=16, summary_timestamp=2**63, repo_index=0)
    infos.append(ServiceInfo(OSTREE, f"everything.{OSTREE}", port=liar_port, server="liar.local.",
                             properties=encode_ostree_txt(all_ones), parsed_addresses=["127.0.0.1"]))
    aiozc = AsyncZeroconf(interfaces=["127.0.0.1"])
    zc = aiozc.zeroconf
    for info in infos:
        # In the registry, the neighbour answers queries for them; announced once, unprobed.
        zc.registry.async_add(info)
        zc.async_send(zc.generate_service_broadcast(info, None))
        await asyncio.sleep(0)
    print("ready", liar_port, flush=True)
    while True:
        await asyncio.sleep(5)
        for info in infos[:50]:  # keep some of them fresh, as a live flood would
            zc.async_send(zc.generate_service_broadcast(info, None))

asyncio.run(main())
"""

PROBE = r"""
import sys, time, urllib.request
lan, status = sys.argv[1], sys.argv[2]
worst = 0.0
for _ in range(5):
    for url in (f"http://{lan}/lanshare/v1/info", f"http://{status}/"):
        started = time.monotonic()
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200 and response.read()
        worst = max(worst, time.monotonic() - started)
    time.sleep(0.5)
print(f"{worst:.3f}")
"""


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_hostile_neighbour_cannot_stop_an_update_from_an_honest_peer(
    tmp_path: Path,
    loopback_host: NetnsLan,  # noqa: F811
) -> None:
    lan = loopback_host
    honest = LanDaemon(lan, "solo", tmp_path / "honest").configure(CONFIG)
    # Enough new objects that the pull deals them out to every peer claiming the whole commit.
    tree = build_tree(tmp_path / "tree", 3)
    for i in range(150):
        (tree / "usr" / "lib" / f"f{i}").write_text(f"file {i}\n" * (i + 1))
    want = lanshare_commit(honest.repo, "os/stable", tree, "--collection-id", "org.example.Os")
    victim = LanDaemon(lan, "solo", tmp_path / "victim")
    honest.start()
    neighbour = lan.python("solo", "-c", NEIGHBOUR, str(honest.repo), str(FAKES), str(GARBAGE), LIAR,
                           stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert neighbour.stdout is not None
        word, port = neighbour.stdout.readline().split()
        assert word == b"ready"
        # The liar is also a configured static peer, so that the pull tries it first.
        liar_url = f"http://127.0.0.1:{int(port)}/"
        victim.configure(CONFIG.replace("[sharing]\n", f'[sharing]\npeers = ["{liar_url}"]\n'))
        own = build_tree(tmp_path / "own", 4)
        lanshare_commit(victim.repo, "os/own", own, "--collection-id", "org.example.Os")
        victim.start()
        wait_for(
            # Generous: on a loaded machine the victim works through 2,200 adverts to get there.
            lambda: victim.table().get(honest.node_id),
            "the victim to find the honest peer",
            timeout=300,
        )
        assert victim.proc is not None
        # It keeps answering while the flood is being resolved, retried and refused.
        lan_address = (victim.state / "lan-address").read_text().strip()
        status_address = (victim.state / "status-address").read_text().strip()
        probe = lan.run(
            "solo", ["python3", "-c", PROBE, lan_address, status_address], check=False, timeout=300
        )
        assert probe.returncode == 0, probe.stderr
        # The update completes, verified, from the honest peer (the liar's bytes are refused).
        pulled = json.loads(victim.cli("pull", "os/stable", "--json", timeout=300).stdout)
        assert pulled["commit"] == want
        assert [s for s in pulled["sources"] if liar_url in s] == [], pulled
        assert any(liar_url in s for s in pulled["abandoned_sources"]), pulled
        victim.cli("fsck", timeout=300)
        table = victim.table()
        assert set(table) <= {honest.node_id, LIAR}, sorted(table)[:10]
        assert table[LIAR]["failures"] >= 1 or table[LIAR]["backoff_until"] is not None, table[LIAR]
        rss = _rss_mb(victim.proc.pid)
        assert rss < 300, rss
        warnings = [line for line in victim.log.read_text().splitlines() if line.startswith("WARNING")]
        print(f"responsive (worst {probe.stdout.strip()} s), RSS {rss:.0f} MB, {len(warnings)} warnings")
        # Thousands of forged adverts: the journal gets a bounded number of lines, not one each.
        assert len(warnings) <= 60, (len(warnings), warnings[:20])
    finally:
        neighbour.kill()
        neighbour.wait(10)
        victim.stop()
        honest.stop()
    assert victim.proc.returncode == 0, victim.log.read_text()[-3000:]
