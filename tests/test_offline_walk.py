"""The offline walk (issue 5): machines with no route to the origin walk the whole checkpoint chain
from what their LAN neighbours hold, found by mDNS.

The origin publishes, GPG-signed: os/stable v1 → v2 (mandatory checkpoint) → v3 → v4 (continue on
os/stable-v2) and v5 on os/stable-v2.  On a namespace LAN:

- host A has the origin (served on A's own loopback: nobody else can reach it), follows the refs
  and prunes with a tight ``max_size``;
- host B has no origin and no peers configured, runs v1, and walks ``lanshare upgrade`` one step
  per run: v2, v4, v5, each pulled from A alone, verified, and deployed by the hook;
- host C, as offline, gets the chain from A and B together: its first run's pulls are spread over
  both; then A stops, and C verifies and deploys the remaining steps with B alone.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from tests.conftest import build_tree, ostree
from tests.gpg_fixtures import GpgKeys
from tests.lan_daemons import LanDaemon, wait_for
from tests.netns import NetnsLan, netns_lan  # noqa: F401
from tests.test_ostree_oracle import assert_same_tree, lanshare_commit

COLLECTION = "org.example.Os"
ORIGIN_PORT = 8000

COMMON = f"""collection_id = "{COLLECTION}"
[trust]
gpg_keyring = "{{keyring}}"
[sharing]
listen = "0.0.0.0:8089"
interfaces = ["eth0"]
[status]
listen = "127.0.0.1:0"
"""

# The deploy hook of an offline machine: record what it was asked to deploy.
HOOK = """#!/bin/sh
echo "$LANSHARE_COMMIT $LANSHARE_REF $LANSHARE_VERSION" >> "$(dirname "$0")/deployed.log"
"""


@dataclass
class Chain:
    repo: Path
    trees: dict[str, Path]
    commits: dict[str, str]


def publish(base: Path, gpg_keys: GpgKeys) -> Chain:
    """The signed chain, each tree with enough files that a pull is worth spreading over peers."""
    repo = base / "origin"
    sign = ["--gpg-sign", gpg_keys.trusted.key_id, "--gpg-homedir", str(gpg_keys.homedir)]
    trees: dict[str, Path] = {}
    for n in range(1, 6):
        tree = trees[f"v{n}"] = build_tree(base / f"tree{n}", n)
        (tree / "usr" / "share").mkdir()
        for i in range(120):
            (tree / "usr" / "share" / f"f{i:03}").write_text(f"file {i} of v{n}\n" * (i % 5 + 1))
    commits = {}
    commits["v1"] = lanshare_commit(
        repo, "os/stable", trees["v1"], "--collection-id", COLLECTION, "--version", "1", *sign
    )
    commits["v2"] = lanshare_commit(repo, "os/stable", trees["v2"], "--version", "2", "--checkpoint", *sign)
    commits["v3"] = lanshare_commit(repo, "os/stable", trees["v3"], "--version", "3", *sign)
    commits["v4"] = lanshare_commit(
        repo, "os/stable", trees["v4"], "--version", "4", "--checkpoint-target", "os/stable-v2", *sign
    )
    commits["v5"] = lanshare_commit(
        repo, "os/stable-v2", trees["v5"], "--version", "5", "--parent", "none",
        "--checkpoint-source", f"os/stable@{commits['v4']}", *sign,
    )  # fmt: skip
    ostree("summary", "-u", f"--repo={repo}")
    return Chain(repo, trees, commits)


def offline_machine(lan: NetnsLan, host: str, base: Path, chain: Chain, keyring: Path) -> LanDaemon:
    """A machine deployed at v1 (its repository holds v1), with no origin and no peers configured."""
    base.mkdir(parents=True)
    hook = base / "deploy"
    hook.write_text(HOOK)
    hook.chmod(0o755)
    deployed = base / "deployed-commit"
    deployed.write_text(chain.commits["v1"] + "\n")
    machine = LanDaemon(lan, host, base).configure(
        COMMON.format(keyring=keyring)
        + f'[upgrade]\ndeploy_command = ["{hook}"]\ndeployed_commit_file = "{deployed}"\n'
    )
    Repo.init(machine.repo, COLLECTION)
    ostree("pull-local", f"--repo={machine.repo}", str(chain.repo), chain.commits["v1"])
    return machine


def upgrade_step(machine: LanDaemon) -> dict[str, object]:
    """One ``lanshare upgrade --json`` run on the machine: the step it deployed."""
    done = machine.cli("upgrade", "--json", check=False, timeout=180)
    assert done.returncode in (0, 10), (
        f"upgrade on {machine.host}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    report = json.loads(done.stdout)
    assert report["status"] == ("done" if done.returncode == 0 else "more"), report
    (step,) = report["steps_deployed"]
    assert isinstance(step, dict)
    return step


def assert_deployed(machine: LanDaemon, chain: Chain, version: str, tmp: Path, *, last: bool = True) -> None:
    """The machine's hook deployed ``version`` (last), and its repository holds exactly that tree."""
    commit = chain.commits[version]
    deployed = [line.split()[0] for line in (machine.base / "deployed.log").read_text().splitlines()]
    assert commit in deployed
    if last:
        assert deployed[-1] == commit
        assert (machine.base / "deployed-commit").read_text().strip() == commit
    repo = Repo.open(machine.repo)
    assert repo.has_object(commit, ObjectType.COMMIT) and not repo.is_partial(commit)
    out = tmp / f"{machine.host}-{version}"
    ostree("checkout", f"--repo={machine.repo}", commit, str(out))
    assert_same_tree(chain.trees[version], out)


def bytes_from(machine: LanDaemon, peer: LanDaemon) -> int:
    row = machine.table().get(peer.node_id)
    return int(row["bytes_in"]) if row else 0


@pytest.mark.slow
def test_offline_machines_walk_the_checkpoint_chain_from_their_lan(
    tmp_path: Path,
    gpg_keys: GpgKeys,
    netns_lan: NetnsLan,  # noqa: F811
) -> None:
    chain = publish(tmp_path / "publisher", gpg_keys)
    v = chain.commits
    keyring = gpg_keys.trusted.keyring

    # The origin is reachable from A only: it listens on A's own loopback.
    origin = netns_lan.python(
        "a", "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(chain.repo), str(ORIGIN_PORT),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    a = LanDaemon(netns_lan, "a", tmp_path / "a").configure(
        COMMON.format(keyring=keyring)
        + f'[origin]\nurl = "http://127.0.0.1:{ORIGIN_PORT}/"\nrefs = ["os/stable"]\n'
        + '[retention]\nkeep_latest = 1\nkeep_younger_than = "0s"\nmax_size = "1KiB"\n'
    )
    # A ran v3 once, so its repository holds it in full.
    Repo.init(a.repo, COLLECTION)
    ostree("pull-local", f"--repo={a.repo}", str(chain.repo), v["v3"])
    b = offline_machine(netns_lan, "b", tmp_path / "b", chain, keyring)
    a.launch()
    b.launch()

    # A follows os/stable through its checkpoints to os/stable-v2 from the origin.  Then a prune
    # with a tight max_size keeps the chain (and v3's commit object) and evicts the rest.
    a.wait_listening()
    assert origin.poll() is None
    a_repo = Repo.open(a.repo)

    def a_follows_the_chain() -> bool:
        heads = (a_repo.read_ref("os/stable"), a_repo.read_ref("os/stable-v2"))
        complete = all(
            a_repo.has_object(v[k], ObjectType.COMMIT) and not a_repo.is_partial(v[k])
            for k in ("v2", "v4", "v5")
        )
        return heads == (v["v4"], v["v5"]) and complete

    wait_for(a_follows_the_chain, "A to follow the refs from the origin", timeout=60)
    a.cli("prune")
    assert a_repo.missing_objects(v["v3"]) != []  # v3's tree evicted…
    assert a_repo.has_object(v["v3"], ObjectType.COMMIT)  # …its commit object kept for paths
    for kept in ("v2", "v4", "v5"):
        assert a_repo.missing_objects(v[kept]) == [], kept

    # B: no origin, no peers in its config; it finds A over mDNS and walks v2, v4, v5 from A.
    b.wait_listening()
    wait_for(lambda: b.table().get(a.node_id), "B to discover A")
    for version in ("v2", "v4", "v5"):
        step = upgrade_step(b)
        assert step["commit"] == v[version], (version, step)
        assert_deployed(b, chain, version, tmp_path)
    assert set(b.table()) == {a.node_id}
    assert bytes_from(b, a) > 0
    b.cli("fsck", "--gpg-keyring", keyring)  # every object and every complete commit's signature

    # C, offline too, finds A and B; the first step comes from both, then A stops for good.
    c = offline_machine(netns_lan, "c", tmp_path / "c", chain, keyring).start()
    wait_for(lambda: {a.node_id, b.node_id} <= set(c.table()), "C to discover A and B")
    step = upgrade_step(c)
    assert step["commit"] == v["v2"]
    assert_deployed(c, chain, "v2", tmp_path)
    assert bytes_from(c, a) > 0 and bytes_from(c, b) > 0, "C's pulls were not spread over A and B"

    a.stop()
    wait_for(lambda: a.node_id not in c.table(), "C to see A leave")
    # The rest of the walk (the run re-checks the refs on its peers) goes on with B alone.
    done = c.cli("upgrade", "--all", "--json")
    report = json.loads(done.stdout)
    assert report["status"] == "done", report
    assert [s["commit"] for s in report["steps_deployed"]] == [v["v4"], v["v5"]]
    assert_deployed(c, chain, "v4", tmp_path, last=False)
    assert_deployed(c, chain, "v5", tmp_path)
    assert set(c.table()) == {b.node_id}
    assert (tmp_path / "c" / "deployed.log").read_text().split()[::3] == [v["v2"], v["v4"], v["v5"]]
