"""LAN convergence: three daemons, one fed by an origin; every one ends up holding the checkpoint chain.

The fleet is chained by static peers (A ← B ← C), so C learns the chain only through B, which
learns it only through A: the chain has to travel hop by hop, as it does to a machine that
sees no origin and only one neighbour.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lanshare import background, daemon
from lanshare.ostree.repo import Repo
from lanshare.pull import PullOptions, SourceSpec, TrustPolicy, pull
from tests.conftest import build_tree, lanshare, ostree
from tests.fleet import (
    Chain,
    holds_chain,
    load,
    publish_chain,
    running_daemon,
    static_origin,
    wait_until_holds_chain,
    write_config,
)
from tests.gpg_fixtures import GpgKeys
from tests.test_ostree_oracle import lanshare_commit

# A generous timeout so a stuck fleet fails the test instead of hanging it; how fast a LAN
# converges is the benches' business (timing under a loaded machine proves nothing).
CONVERGENCE_TIMEOUT = 180.0


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, gpg_keys: GpgKeys) -> Chain:
    return publish_chain(tmp_path_factory.mktemp("publish"), gpg_keys)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.mark.asyncio
async def test_three_daemons_one_fed_by_an_origin_all_hold_the_chain(
    tmp_path: Path, chain: Chain, gpg_keys: GpgKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(background, "LAN_INTERVAL", 0.5)
    monkeypatch.setattr(background, "STATIC_PROBE_INTERVAL", 0.5)
    # The origin's own copy: this test publishes a fix on it later.
    published = Path(shutil.copytree(chain.repo, tmp_path / "origin"))
    async with static_origin(published) as origin:
        # A: online, follows os/stable from the origin.
        write_config(
            tmp_path / "a",
            chain.keyring,
            f'[origin]\nurl = "{origin}"\nrefs = ["os/stable"]\npoll_interval = "1h"\n',
        )
        async with running_daemon(load(tmp_path / "a")) as a:
            # B: offline, told to follow os/stable; its only neighbour is A.
            write_config(tmp_path / "b", chain.keyring, '[origin]\nrefs = ["os/stable"]\n')
            _add_sharing_peers(tmp_path / "b", [a.url])
            async with running_daemon(load(tmp_path / "b")) as b:
                # C: offline, follows what it holds (os/stable at v1, deployed long ago); sees only B.
                write_config(tmp_path / "c", chain.keyring)
                _add_sharing_peers(tmp_path / "c", [b.url])
                c_config = load(tmp_path / "c")
                old = Repo.init(c_config.repo.path)
                options = PullOptions(trust=TrustPolicy(gpg_keyring=chain.keyring))
                await pull(old, chain.commits["v1"], [SourceSpec(origin)], ref="os/stable", options=options)
                async with running_daemon(c_config) as c:
                    deadline = asyncio.get_running_loop().time() + CONVERGENCE_TIMEOUT
                    for node in (a, b, c):
                        await wait_until_holds_chain(node.repo, chain, deadline)
                    await _check_status_pages(chain, [a, b, c])

                    # An emergency fix on the new ref, seen by A's next poll, reaches B (which
                    # only follows os/stable, and os/stable-v2 through its checkpoint) and C.
                    fix = lanshare_commit(
                        published, "os/stable-v2", build_tree(tmp_path / "tree6", 6),
                        "--gpg-sign", gpg_keys.trusted.key_id, "--gpg-homedir", str(gpg_keys.homedir),
                    )  # fmt: skip
                    await a.app[daemon.BACKGROUND].round("origin poll")
                    deadline = asyncio.get_running_loop().time() + CONVERGENCE_TIMEOUT
                    for node in (b, c):
                        while node.repo.read_ref("os/stable-v2") != fix:
                            assert asyncio.get_running_loop().time() < deadline, node.url
                            await asyncio.sleep(0.2)
    for name in ("a", "b", "c"):
        repo = Repo.open(load(tmp_path / name).repo.path)
        assert repo.read_ref("os/stable-v2") == fix
        assert "no errors found" in ostree("fsck", f"--repo={repo.path}").stdout
    # C, offline with v1 deployed, can compute its whole way forward from its own cache.
    assert lanshare("path", "--repo", repo.path, "--from", chain.commits["v1"], "--ref", "os/stable") == 0


def _add_sharing_peers(base: Path, urls: list[str]) -> None:
    """Add ``[sharing] peers`` to the section :func:`write_config` opened."""
    config = base / "lanshare.toml"
    text = config.read_text()
    peers = "peers = [" + ", ".join(f'"{u}"' for u in urls) + "]\n"
    config.write_text(text.replace("[sharing]\n", "[sharing]\n" + peers, 1))


async def _check_status_pages(chain: Chain, nodes: list[Any]) -> None:
    """Each daemon's own status API says it holds both heads and every checkpoint."""
    from lanshare.status.app import STATUS_ADDRESS

    for node in nodes:
        status = await asyncio.to_thread(_get_json, f"http://{node.app[STATUS_ADDRESS]}/api/v1/status")
        assert_status_shows_chain(status, chain)


def assert_status_shows_chain(status: dict[str, Any], chain: Chain) -> None:
    """The status document's chain: every checkpoint held whole, each ref at its head."""
    commits = {c["checksum"]: c for c in status["chain"]["commits"]}
    for commit in [*chain.checkpoints, *chain.heads.values()]:
        assert commit in commits and commits[commit]["complete"], (commit, status["chain"])
    assert {c["checksum"] for c in commits.values() if c["checkpoint"] or c["target"]} >= set(
        chain.checkpoints
    )
    heads = {r["name"]: r["head"] for r in status["refs"]}
    assert all(heads.get(ref) == head for ref, head in chain.heads.items()), status["refs"]


ORIGIN_PORT = 8700  # inside host a's own namespace: nothing else listens there


def test_three_machines_on_a_namespace_lan_find_each_other_by_mdns_and_converge(
    tmp_path: Path, chain: Chain
) -> None:
    """The same fleet as real machines: processes in three namespaces, peers found only by mDNS."""
    from tests.lan_daemons import LanDaemon, wait_for
    from tests.netns import netns_lan_context, require_namespaces

    require_namespaces()
    common = (
        f'[trust]\ngpg_keyring = "{chain.keyring}"\n'
        '[sharing]\nlisten = "0.0.0.0:8089"\ninterfaces = ["eth0"]\n'
        '[status]\nlisten = "127.0.0.1:0"\n'
    )
    with netns_lan_context(3) as lan:
        origin = f"http://{lan['a'].address}:{ORIGIN_PORT}/"
        lan.python(
            "a", "-m", "http.server", "--bind", lan["a"].address, "--directory", str(chain.repo),
            str(ORIGIN_PORT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: _fetch(lan, "a", origin + "config") is not None, "the origin to serve")
        a = LanDaemon(lan, "a", tmp_path / "a").configure(
            common + f'[origin]\nurl = "{origin}"\nrefs = ["os/stable"]\n'
        )
        b = LanDaemon(lan, "b", tmp_path / "b").configure(common + '[origin]\nrefs = ["os/stable"]\n')
        # C deployed v1 long ago and follows what it holds; it gets v1 with the ostree CLI.
        c = LanDaemon(lan, "c", tmp_path / "c").configure(common)
        ostree("init", f"--repo={c.repo}", "--mode=archive")
        ostree("pull-local", f"--repo={c.repo}", str(chain.repo), chain.commits["v1"])
        ostree("refs", f"--repo={c.repo}", "--create=os/stable", chain.commits["v1"])
        started = time.monotonic()
        for daemon_ in (a, b, c):
            daemon_.start()
        try:
            for daemon_ in (a, b, c):
                remaining = CONVERGENCE_TIMEOUT - (time.monotonic() - started)
                wait_for(
                    lambda d=daemon_: holds_chain(Repo.open(d.repo), chain),  # type: ignore[misc]
                    f"{daemon_.host} to hold the chain",
                    timeout=max(remaining, 0.1),
                    every=0.5,
                )
            for daemon_ in (a, b, c):
                status_address = (daemon_.state / "status-address").read_text().strip()
                text = _fetch(lan, daemon_.host, f"http://{status_address}/api/v1/status")
                assert text is not None, daemon_.host
                assert_status_shows_chain(json.loads(text), chain)
            # B and C learnt of A (and of each other) by mDNS alone: no peers were configured.
            assert len(b.table()) == 2 and len(c.table()) == 2
        finally:
            for daemon_ in (a, b, c):
                daemon_.stop()
    for daemon_ in (a, b, c):
        assert daemon_.proc is not None and daemon_.proc.returncode == 0, daemon_.log.read_text()
        assert "no errors found" in ostree("fsck", f"--repo={daemon_.repo}").stdout


def _fetch(lan: Any, host: str, url: str) -> str | None:
    """GET ``url`` from inside ``host``'s namespace; None when it does not answer."""
    code = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    done = lan.run(host, [sys.executable, "-c", code, url], check=False)
    return str(done.stdout) if done.returncode == 0 else None
