"""LAN convergence: three daemons, one fed by an origin; every one ends up holding the checkpoint chain.

The fleet is chained by static peers (A ← B ← C), so C learns the chain only through B, which
learns it only through A: the chain has to travel hop by hop, as it does to a machine that
sees no origin and only one neighbour.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lanshare import background
from lanshare.ostree.repo import Repo
from lanshare.pull import PullOptions, SourceSpec, TrustPolicy, pull
from tests.conftest import lanshare, ostree
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

# The promise; the loops are patched to look every half second, not to be fast.
CONVERGENCE_DEADLINE = 30.0


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, gpg_keys: GpgKeys) -> Chain:
    return publish_chain(tmp_path_factory.mktemp("publish"), gpg_keys)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.mark.asyncio
async def test_three_daemons_one_fed_by_an_origin_all_hold_the_chain(
    tmp_path: Path, chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(background, "LAN_INTERVAL", 0.5)
    async with static_origin(chain.repo) as origin:
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
                    deadline = asyncio.get_running_loop().time() + CONVERGENCE_DEADLINE
                    for node in (a, b, c):
                        await wait_until_holds_chain(node.repo, chain, deadline)
                    await _check_status_pages(chain, [a, b, c])
    for name in ("a", "b", "c"):
        repo = Repo.open(load(tmp_path / name).repo.path)
        assert holds_chain(repo, chain)
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
        text = json.dumps(status)
        for commit in [*chain.checkpoints, *chain.heads.values()]:
            assert commit in text, (commit, status)
