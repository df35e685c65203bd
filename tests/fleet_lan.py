"""A namespace LAN of lanshare machines following one shaped origin, for the fleet test and bench.

The origin is a plain HTTP server (``python -m http.server``) in a host of its own, its egress
shaped with ``tc tbf`` like a shared uplink; its access log (one line per request) counts what it
sent.  The machines run whole ``lanshare serve`` daemons with mDNS on the LAN's ``eth0``.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lanshare.netns import SUBNET, Host, NetnsLan
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo

ORIGIN_PORT = 8000
SHARING_PORT = 8089
REF = "os/stable"
_OBJECT_GET = re.compile(r'"GET /(objects/[0-9a-f]{2}/[0-9a-f]{62}\.[a-z]+) HTTP')


def make_tree(root: Path, size: int, files: int, seed: int = 1) -> Path:
    """``files`` files of random (incompressible) bytes, about ``size`` bytes in all, in a few dirs."""
    rng = random.Random(seed)
    for i in range(files):
        directory = root / f"d{i % 7}" / f"s{i % 3}"
        directory.mkdir(parents=True, exist_ok=True)
        # Sizes vary (a few big files, many small ones) around the mean.
        length = int(size / files * rng.choice([0.1, 0.3, 0.5, 1, 1, 2, 3]))
        (directory / f"f{i:05}").write_bytes(rng.randbytes(max(length, 1)))
    return root


def publish(base: Path, size: int, files: int) -> tuple[Path, str]:
    """An archive repository holding ``REF`` at one commit of such a tree: its path and the commit."""
    repo = base / "origin"
    tree = make_tree(base / "tree", size, files)
    subprocess.run(["ostree", "init", "--mode=archive", f"--repo={repo}"], check=True)
    done = subprocess.run(
        ["ostree", "commit", f"--repo={repo}", f"--branch={REF}", f"--tree=dir={tree}", "--subject=v1"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    subprocess.run(["ostree", "summary", "-u", f"--repo={repo}"], check=True)
    return repo, done.stdout.strip()


def archive_objects(repo: Path) -> dict[str, int]:
    """Every object file of an archive repository (path under the repo → size)."""
    objects: dict[str, int] = {}
    for path in (repo / "objects").rglob("*"):
        if path.is_file():
            objects[str(path.relative_to(repo))] = path.stat().st_size
    return objects


def origin_in_hub(lan: NetnsLan) -> str:
    """Give the LAN's hub namespace (its bridge) an address and register it as host ``"origin"``:
    an origin outside the machines' hosts, so all eight hosts can be machines.  Its name."""
    address = f"{SUBNET}.254"
    subprocess.run(["ip", "-n", lan.hub, "addr", "add", f"{address}/24", "dev", "br0"], check=True)
    lan.hosts["origin"] = Host("origin", lan.hub, address)
    return "origin"


@dataclass
class Origin:
    """The origin's HTTP server in its host, and its access log."""

    lan: NetnsLan
    host: str
    repo: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.lan[self.host].address}:{ORIGIN_PORT}/"

    def start(self, rate: str) -> Origin:
        """Serve the repository, egress shaped to ``rate`` (e.g. ``"20mbit"``)."""
        dev = "br0" if self.lan[self.host].netns == self.lan.hub else "eth0"
        self.lan.run(self.host, ["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                                 "burst", "64kb", "latency", "400ms"])  # fmt: skip
        with open(self.log, "ab") as out:
            self.proc = self.lan.popen(
                self.host,
                [sys.executable, "-m", "http.server", "--bind", "0.0.0.0", "--directory", str(self.repo),
                 str(ORIGIN_PORT)],
                stdout=subprocess.DEVNULL, stderr=out,
            )  # fmt: skip
        return self

    def offset(self) -> int:
        """The log's size now: count only what is logged after it."""
        return self.log.stat().st_size if self.log.exists() else 0

    def objects_sent(self, since: int = 0) -> Counter[str]:
        """How many times each object was requested since ``since``."""
        with open(self.log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        return Counter(_OBJECT_GET.findall(text))

    def bytes_sent(self, since: int = 0) -> int:
        """The object bytes sent since ``since`` (each request counted at the object's size)."""
        sizes = archive_objects(self.repo)
        return sum(sizes.get(path, 0) * n for path, n in self.objects_sent(since).items())


def machine_config(origin: Origin, *, coordinate: bool = True, extra: str = "") -> str:
    """A machine following ``REF`` from the origin, sharing and discovering on the LAN's eth0."""
    return (
        f'[origin]\nurl = "{origin.url}"\nrefs = ["{REF}"]\npoll_interval = "1h"\n'
        "[trust]\nrequire_signatures = false\n"
        f'[sharing]\nlisten = "0.0.0.0:{SHARING_PORT}"\ninterfaces = ["eth0"]\n{extra}'
        '[status]\nlisten = "127.0.0.1:0"\n'
        f"[pull]\ncoordinate = {'true' if coordinate else 'false'}\n"
    )


def holds(repo_path: Path, commit: str) -> bool:
    """The machine's repository holds ``commit`` in full, with ``REF`` on it."""
    if not (repo_path / "config").exists():
        return False
    repo = Repo.open(repo_path)
    return (
        repo.read_ref(REF) == commit
        and repo.has_object(commit, ObjectType.COMMIT)
        and not repo.is_partial(commit)
    )


def file_objects(repo_path: Path) -> int:
    """How many file objects a machine's repository holds (its progress, to pick a moment)."""
    directory = repo_path / "objects"
    if not directory.exists():
        return 0
    return sum(1 for _, _, names in os.walk(directory) for n in names if n.endswith(".filez"))
