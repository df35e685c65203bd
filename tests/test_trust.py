"""Trust (DESIGN §6): what a hostile machine on the LAN can try, against the real CLI and daemons.

tests/test_pull.py already rejects, through the pull engine and archive (nginx) sources: an
unsigned newer commit, one signed by an unknown key, a wrong ref binding, a wrong collection and a
ref moving backwards.  Here the hostile side is a real ``lanshare serve`` peer (info, batch API)
and the victim runs the real ``lanshare pull`` and ``lanshare upgrade``; added are a trusted
signature transplanted onto a commit with altered metadata, a trusted signature with flipped
bytes, and the admin/status surface seen from the LAN port.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lanshare.gvariant import Variant
from lanshare.ostree.objects import ObjectType, encode_metadata, parse_metadata
from lanshare.ostree.repo import Repo
from lanshare.status.app import STATUS_ADDRESS_FILE
from tests.conftest import lanshare
from tests.gpg_fixtures import GpgKeys
from tests.publisher import publish
from tests.test_serve import Daemon, _start, _stop

SOURCE_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Lan:
    """An honest publisher peer and hostile peers, each a running ``lanshare serve``."""

    v1: str
    v2: str
    keyring: Path
    honest: Daemon
    hostile: dict[str, tuple[Daemon, str]]  # name → (daemon, the commit its os/stable offers)


def _transplant(repo: Repo, signed: str) -> str:
    """A commit like ``signed`` with altered metadata and a newer time, carrying its signature."""
    original = repo.load_commit(signed)
    metadata = {**original.metadata, "version": Variant("s", "2-evil")}
    forged = dataclasses.replace(original, metadata=metadata, timestamp=original.timestamp + 100)
    checksum = repo.write_metadata(ObjectType.COMMIT, forged.to_bytes())
    meta = repo.read_metadata_bytes(signed, ObjectType.COMMIT_META)
    repo.write_commitmeta_bytes(checksum, meta)
    repo.write_ref("os/stable", checksum)
    return checksum


def _flip_signature(repo: Repo, signed: str) -> str:
    """The trusted commit itself, its detached signature altered by one byte."""
    meta = parse_metadata(repo.read_metadata_bytes(signed, ObjectType.COMMIT_META), "commitmeta")
    [signature] = meta["ostree.gpgsigs"].value
    flipped = bytearray(signature)
    flipped[len(flipped) // 2] ^= 0x01
    meta["ostree.gpgsigs"] = Variant("aay", [bytes(flipped)])
    repo.write_commitmeta_bytes(signed, encode_metadata(meta))
    return signed


@pytest.fixture(scope="module")
def lan(tmp_path_factory: pytest.TempPathFactory, gpg_keys: GpgKeys) -> Iterator[Lan]:
    base = tmp_path_factory.mktemp("trust")
    published = publish(base, gpg_keys, name="publisher")
    path = published.variant("transplanted-signature")
    published.variants["transplanted-signature"] = (path, _transplant(Repo.open(path), published.v2))
    daemons: list[Daemon] = []

    def serve(name: str, repo: Path) -> Daemon:
        (base / f"d-{name}").mkdir()
        daemon = _start(base / f"d-{name}", repo)
        daemons.append(daemon)
        return daemon

    try:
        honest = serve("honest", published.repo)
        hostile = {name: (serve(name, repo), bad) for name, (repo, bad) in published.variants.items()}
        # Flipped signature bytes on the trusted commit itself: the peer that serves it is at v2 too.
        path = published.variant("flipped-signature")
        flipped = _flip_signature(Repo.open(path), published.v2)
        hostile["flipped-signature"] = (serve("flipped", path), flipped)
        yield Lan(published.v1, published.v2, published.keyring, honest, hostile)
    finally:
        for daemon in daemons:
            assert _stop(daemon) == 0


@dataclass
class Machine:
    config: Path
    repo: Path
    state: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LANSHARE_STATE_DIR": str(self.state)}
        argv = [sys.executable, "-m", "lanshare.cli", *args, "--config", str(self.config)]
        return subprocess.run(argv, cwd=SOURCE_ROOT, env=env, capture_output=True, text=True, timeout=120)


def _machine(tmp_path: Path, lan: Lan, peers: list[str], extra: str = "") -> Machine:
    """A machine's config in ``tmp_path`` (rewritten if it exists: same repository, new peers)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    repo, state = tmp_path / "repo", tmp_path / "state"
    config = tmp_path / "lanshare.toml"
    urls = ", ".join(f'"{p}"' for p in peers)
    config.write_text(
        f'[repo]\npath = "{repo}"\n[database]\nurl = "sqlite:///{tmp_path / "index.sqlite"}"\n'
        f'[trust]\ngpg_keyring = "{lan.keyring}"\n'
        f"[sharing]\npeers = [{urls}]\nadvertise = false\ndiscovery = false\n{extra}"
    )
    return Machine(config, repo, state)


def _objects(repo: Path) -> list[str]:
    return sorted(p.name for p in (repo / "objects").rglob("*")) if repo.exists() else []


REASONS = {
    "unsigned": "is not signed",
    "unknown-key": "has no valid signature",
    "transplanted-signature": "BAD signature",
    "flipped-signature": "BAD signature",
    "downgrade": "refusing to move os/stable backwards",
}
HOSTILE = ["unsigned", "unknown-key", "transplanted-signature", "flipped-signature", "downgrade"]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_peer_alone_cannot_make_a_machine_store_or_move_anything(
    tmp_path: Path, lan: Lan, name: str
) -> None:
    daemon, bad = lan.hostile[name]
    if name == "downgrade":
        # The machine already has v2, from the publisher.
        assert _machine(tmp_path, lan, [lan.honest.url]).run("pull", "os/stable").returncode == 0
    machine = _machine(tmp_path, lan, [daemon.url])
    before = _objects(machine.repo)
    result = machine.run("pull", "os/stable")
    assert result.returncode == 1, result
    message = result.stderr.strip().splitlines()
    assert len(message) == 1 and message[0].startswith("lanshare: error:"), result.stderr
    assert bad in message[0] and REASONS[name] in message[0], message[0]
    repo = Repo.init(machine.repo)
    if name == "downgrade":
        assert repo.read_ref("os/stable") == lan.v2 and _objects(machine.repo) == before
    else:
        assert repo.read_ref("os/stable") is None
        # Nothing of it entered the cache: no commit object, no partial marker, no detached metadata.
        assert not repo.has_object(bad, ObjectType.COMMIT)
        assert not repo.is_partial(bad)
        assert not any(k is ObjectType.FILE for _, k, _ in repo.iter_objects())
    assert lanshare("fsck", "--repo", machine.repo, "--gpg-keyring", lan.keyring) == 0


@pytest.mark.parametrize("name", HOSTILE)
def test_with_an_honest_peer_too_the_machine_gets_the_signed_commit_only(
    tmp_path: Path, lan: Lan, name: str
) -> None:
    daemon, bad = lan.hostile[name]
    machine = _machine(tmp_path, lan, [daemon.url, lan.honest.url])
    result = machine.run("pull", "os/stable", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["commit"] == lan.v2
    repo = Repo.open(machine.repo)
    assert repo.read_ref("os/stable") == lan.v2
    if bad != lan.v2:
        assert not repo.has_object(bad, ObjectType.COMMIT)
    # The signature kept is the publisher's, not the flipped copy.
    assert lanshare("fsck", "--repo", machine.repo, "--gpg-keyring", lan.keyring) == 0


@pytest.mark.parametrize("name", ["unsigned", "unknown-key", "transplanted-signature"])
def test_upgrade_never_deploys_an_unsigned_or_forged_commit(tmp_path: Path, lan: Lan, name: str) -> None:
    daemon, bad = lan.hostile[name]
    deployed = tmp_path / "deployed"
    deployed.write_text(lan.v1 + "\n")
    hook_log = tmp_path / "hook.log"
    hook = ["sh", "-c", f'echo "$LANSHARE_COMMIT" >> {hook_log}']
    upgrade = f'[upgrade]\ndeploy_command = {json.dumps(hook)}\ndeployed_commit_file = "{deployed}"\n'
    alone = _machine(tmp_path / "alone", lan, [daemon.url], upgrade)
    result = alone.run("upgrade", "--all", "--ref", "os/stable")
    # Nothing verified to deploy: it fails or finds nothing, and the hook never ran.
    assert result.returncode in (0, 1), result
    assert not hook_log.exists(), hook_log.read_text()
    assert deployed.read_text().strip() == lan.v1
    both = _machine(tmp_path, lan, [daemon.url, lan.honest.url], upgrade)
    result = both.run("upgrade", "--all", "--ref", "os/stable")
    assert result.returncode == 0, result
    assert hook_log.read_text().split() == [lan.v2]
    assert deployed.read_text().strip() == lan.v2
    assert not Repo.open(both.repo).has_object(bad, ObjectType.COMMIT)


def _status(url: str, method: str = "GET") -> int:
    request = urllib.request.Request(url, method=method, data=b"x" if method != "GET" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_the_status_and_admin_api_are_not_reachable_from_the_lan_listener(tmp_path: Path, lan: Lan) -> None:
    daemon = lan.honest
    status = (daemon.state / STATUS_ADDRESS_FILE).read_text().strip()
    host, _, port = status.rpartition(":")
    # The status listener binds loopback only (the default), whatever the LAN listener binds.
    assert host == "127.0.0.1" and int(port) > 0
    assert _status(f"http://{status}/api/v1/status") == 200
    for path in ("api/v1/status", "metrics", "chain.svg", "api/v1/pins", "api/v1/prune", "admin", "status"):
        assert _status(daemon.url + path) == 404, path
    with urllib.request.urlopen(daemon.url + "config", timeout=10) as response:
        assert response.status == 200
    paths = ["", "config", "summary", "refs/heads/os/stable", "lanshare/v1/info", "lanshare/v1/objects",
             "api/v1/status", f"objects/{lan.v2[:2]}/{lan.v2[2:]}.commit", "lanshare/v1/pins"]  # fmt: skip
    for path in paths:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            if (path, method) == ("lanshare/v1/objects", "POST"):
                continue  # the read-only batch fetch, with a body that is not a request: 400
            assert _status(daemon.url + path, method) in (404, 405), (method, path)
    assert _status(daemon.url + "lanshare/v1/objects", "POST") == 400
    # Nothing the requests tried changed the served repository.
    with urllib.request.urlopen(daemon.url + "refs/heads/os/stable", timeout=10) as response:
        assert response.read().decode().strip() == lan.v2
