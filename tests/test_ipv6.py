"""An IPv6-only LAN: two daemons advertise and resolve link-local addresses, and one pulls from the other.

Two network namespaces joined by a veth pair with no IPv4 at all, only the link-local addresses
the kernel gives each end (duplicate address detection off, so they are usable at once).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session
from zeroconf import IPVersion

from lanshare import daemon
from lanshare.discovery.advertise import resolve_interfaces
from lanshare.index.db import make_engine
from lanshare.index.models import Peer
from lanshare.ostree.repo import Repo
from tests import needs
from tests.conftest import build_tree, lanshare

SOURCE_ROOT = Path(__file__).resolve().parent.parent
CONFIG = """[repo]
path = "{repo}"
[sharing]
listen = "[::]:0"
interfaces = ["eth0"]
[trust]
require_signatures = false
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _addresses(ns: str) -> str:
    done = subprocess.run(
        ["ip", "-n", ns, "-6", "addr", "show", "dev", "eth0"], capture_output=True, text=True
    )
    return done.stdout


@contextmanager
def ipv6_only_link() -> Iterator[tuple[str, str]]:
    """Two namespaces whose eth0s are joined, with IPv6 link-local addresses only; their names."""
    tag = uuid.uuid4().hex[:6]
    names = (f"ls6a-{tag}", f"ls6b-{tag}")
    try:
        for ns in names:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", names[0], "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", names[1])
        for ns in names:
            for key in ("accept_dad=0", "disable_ipv6=0"):
                subprocess.run(
                    ["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.eth0.{key}"], check=True
                )
            _ip("-n", ns, "link", "set", "eth0", "multicast", "on", "up")
        # The link-local address appears once both ends are up: the daemons need it at start.
        deadline = time.monotonic() + 30
        for ns in names:
            while "fe80:" not in _addresses(ns):
                assert time.monotonic() < deadline, _addresses(ns)
                time.sleep(0.05)
        yield names
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _serve(ns: str, base: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LANSHARE_STATE_DIR": str(base / "state")}
    with open(base / "serve.log", "wb") as log:
        argv = [sys.executable, "-m", "lanshare.cli", "serve", "--config", str(base / "lanshare.toml")]
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], cwd=SOURCE_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )


def _peers(base: Path) -> list[Peer]:
    engine = make_engine(f"sqlite:///{base / 'state' / 'index.sqlite'}")
    try:
        with Session(engine) as session:
            return list(session.scalars(select(Peer)))
    except Exception:
        return []  # not created yet
    finally:
        engine.dispose()


def _node_id(base: Path, proc: subprocess.Popen[bytes]) -> str:
    """The daemon's node id, once it wrote it."""
    path = base / "state" / daemon.NODE_ID_FILE
    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, (base / "serve.log").read_text()
        time.sleep(0.05)
    return path.read_text().strip()


def test_discovery_and_pull_over_ipv6_link_local_only(tmp_path: Path) -> None:
    needs.check("namespaces")
    a, b = tmp_path / "a", tmp_path / "b"
    tree = build_tree(tmp_path / "tree")
    assert (
        lanshare("commit", "--repo", a / "repo", "--branch", "os/stable", "--tree", tree, "--no-xattrs") == 0
    )
    for base in (a, b):
        base.mkdir(exist_ok=True)
        (base / "lanshare.toml").write_text(CONFIG.format(repo=base / "repo"))
    with ipv6_only_link() as (ns_a, ns_b):
        procs = [_serve(ns_a, a), _serve(ns_b, b)]
        try:
            a_id = _node_id(a, procs[0])
            deadline = time.monotonic() + 90
            while not (found := [p for p in _peers(b) if p.node_id == a_id]):
                for proc, base in zip(procs, (a, b), strict=True):
                    assert proc.poll() is None, (base / "serve.log").read_text()
                assert time.monotonic() < deadline, (b / "serve.log").read_text()
                time.sleep(0.2)
            # B knows A by its link-local address, scoped to the interface it heard it on.
            (peer,) = found
            assert peer.addresses and all(x.startswith("fe80:") and "%" in x for x in peer.addresses)
            env = {**os.environ, "LANSHARE_STATE_DIR": str(b / "state")}
            done = subprocess.run(
                ["ip", "netns", "exec", ns_b, sys.executable, "-m", "lanshare.cli", "pull", "os/stable",
                 "--config", str(b / "lanshare.toml")],
                cwd=SOURCE_ROOT, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                assert proc.wait(30) == 0
    head = Repo.open(a / "repo").read_ref("os/stable")
    assert Repo.open(b / "repo").read_ref("os/stable") == head
    assert Repo.open(b / "repo").missing_objects(head or "") == []


def test_a_listener_on_ipv6_advertises_ipv6_and_ipv4_stays_as_it_was() -> None:
    # Reads the interface list only: nothing is bound or sent.
    both = resolve_interfaces(["lo"], "::")
    assert both.ip_version is IPVersion.All and set(both.advertised) == {"127.0.0.1", "::1"}
    assert resolve_interfaces(["lo"], "::1").advertised == ["::1"]
    v4 = resolve_interfaces(["lo"], "0.0.0.0")
    assert v4.ip_version is IPVersion.V4Only and v4.advertised == ["127.0.0.1"]
