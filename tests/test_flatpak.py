"""Flatpak remotes through lanshare: signed summaries survive any number of hops (DESIGN §5c).

Real parts: Debian's ``flatpak`` 1.14 builds and signs the repository and is the client (a private
HOME each); three ``lanshare serve`` processes on 127.0.0.1 chained by ``lanshare pull --from``;
a plain HTTP origin; libostree's ``ostree pull`` with ``gpg-verify-summary=true``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lanshare.gvariant import encode
from lanshare.ostree import flatpak_cache
from lanshare.ostree.repo import Repo
from lanshare.ostree.summary import parse_summary
from tests.conftest import lanshare, ostree
from tests.flatpak_fixtures import (
    APP,
    APP_ID,
    COLLECTION,
    FLATPAK,
    REFS,
    RUNTIME,
    Publisher,
    build_publisher,
    flatpak,
    home_env,
)
from tests.fleet import serve_directory, write_config
from tests.gpg_fixtures import GpgKeys

pytestmark = pytest.mark.skipif(FLATPAK is None, reason="flatpak not installed (.ci/setup installs it)")

SOURCE_ROOT = Path(__file__).resolve().parent.parent
SUMMARY_FILES = ("summary", "summary.sig", "summary.idx", "summary.idx.sig")


def _lanshare_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LANSHARE_")}


@dataclass
class Node:
    """One machine: ``lanshare serve`` on 127.0.0.1 (no mDNS) and its CLI."""

    base: Path
    keyring: Path
    extra: str = ""
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config = write_config(self.base, self.keyring, self.extra)
        self.env = _lanshare_env() | {"LANSHARE_STATE_DIR": str(self.base / "state")}

    @property
    def repo(self) -> Path:
        return self.base / "state" / "repo"

    def start(self) -> Node:
        address = self.base / "state" / "lan-address"
        with open(self.base / "serve.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lanshare.cli", "serve", "--config", str(self.config)],
                cwd=SOURCE_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not address.exists():
            assert self.proc.poll() is None, (self.base / "serve.log").read_text()
            assert time.monotonic() < deadline, "lanshare serve did not start listening"
            time.sleep(0.05)
        self.url = f"http://{address.read_text().strip()}/"
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()

    def pull(self, source: str, *refs: str) -> None:
        """``lanshare pull REF --from SOURCE`` for each ref (in this process: no start-up per pull)."""
        saved = os.environ.get("LANSHARE_STATE_DIR")
        os.environ["LANSHARE_STATE_DIR"] = self.env["LANSHARE_STATE_DIR"]
        try:
            for ref in refs:
                assert lanshare("pull", ref, "--from", source, "--config", self.config) == 0, ref
        finally:
            if saved is None:
                del os.environ["LANSHARE_STATE_DIR"]
            else:
                os.environ["LANSHARE_STATE_DIR"] = saved

    def log(self) -> str:
        return (self.base / "serve.log").read_text()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        data: bytes = response.read()
        return data


def _files(repo: Path) -> dict[str, bytes]:
    """The summary files of a repository, ``summaries/`` included."""
    found = {name: (repo / name).read_bytes() for name in SUMMARY_FILES if (repo / name).exists()}
    if (repo / "summaries").is_dir():
        found |= {f"summaries/{p.name}": p.read_bytes() for p in (repo / "summaries").iterdir()}
    return found


@dataclass
class Hops:
    """The signed publisher, its origin URL and machines A, B, C (C pulls from B, B from A)."""

    publisher: Publisher
    origin: str
    nodes: list[Node]

    def propagate(self, *refs: str) -> None:
        """A pulls ``refs`` from the origin, then B from A, then C from B."""
        source = self.origin
        for node in self.nodes:
            node.pull(source, *refs)
            source = node.url


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, gpg_keys: GpgKeys) -> Publisher:
    """Runtime, app and appstream, GPG-signed, with a collection id: built once per module."""
    sign = (f"--gpg-sign={gpg_keys.trusted.key_id}", f"--gpg-homedir={gpg_keys.homedir}")
    return build_publisher(tmp_path_factory.mktemp("signed"), sign, COLLECTION)


@pytest.fixture(scope="module")
def hops(tmp_path_factory: pytest.TempPathFactory, signed: Publisher, gpg_keys: GpgKeys) -> Iterator[Hops]:
    base = tmp_path_factory.mktemp("hops")
    config = f'[repo]\ncollection_id = "{COLLECTION}"\n'
    nodes = [Node(base / name, gpg_keys.trusted.keyring, config) for name in "abc"]
    origin = serve_directory(signed.repo)
    try:
        for node in nodes:
            node.start()
        yield Hops(signed, next(origin), nodes)
    finally:
        for node in nodes:
            node.stop()
        origin.close()


def _client(home: Path, keyring: Path, url: str) -> dict[str, str]:
    env = home_env(home)
    flatpak(env, "--user", "remote-add", f"--gpg-import={keyring}", "lan", url)
    return env


def test_a_signed_flatpak_remote_installs_and_updates_through_three_hops(
    hops: Hops, tmp_path: Path, gpg_keys: GpgKeys
) -> None:
    c = hops.nodes[-1]
    # Part of the remote on C: C serves its own summary, never one promising refs it lacks.
    hops.propagate(RUNTIME)
    assert not (c.repo / "summary.sig").exists()
    assert [r.name for r in parse_summary(_get(c.url + "summary")).refs] == [RUNTIME]
    hops.propagate(*REFS)
    # Every ref held: each hop serves the publisher's summary set byte for byte, over HTTP.
    published = _files(hops.publisher.repo)
    assert {"summary.sig", "summary.idx", "summary.idx.sig"} <= published.keys()
    for node in hops.nodes:
        for name in ("summary", "summary.sig", "summary.idx", "summary.idx.sig"):
            assert _get(node.url + name) == published[name], f"{node.base.name}: {name}"
        for name in (n for n in published if n.endswith(".gz")):
            if (c.repo / name).exists():
                assert _get(node.url + name) == published[name]

    env = _client(tmp_path / "home", gpg_keys.trusted.keyring, c.url)
    listing = flatpak(env, "--user", "remote-ls", "-d", "lan").stdout
    assert APP_ID in listing and "org.test.Platform" in listing
    flatpak(env, "--user", "install", "-y", "--noninteractive", "lan", APP_ID)
    v1 = Repo.open(hops.publisher.repo).read_ref(APP)
    assert flatpak(env, "--user", "info", "--show-commit", APP_ID).stdout.strip() == v1

    # v2 is published later, flows A → B → C, and `flatpak update` on C's client gets it.
    hops.publisher.publish_app("2")
    v2 = Repo.open(hops.publisher.repo).read_ref(APP)
    assert v2 != v1
    hops.propagate(*REFS)
    assert _get(c.url + "summary.idx") == (hops.publisher.repo / "summary.idx").read_bytes()
    flatpak(env, "--user", "update", "-y", "--noninteractive")
    assert flatpak(env, "--user", "info", "--show-commit", APP_ID).stdout.strip() == v2


def test_with_the_wrong_key_flatpak_fails_on_verification(
    hops: Hops, tmp_path: Path, gpg_keys: GpgKeys
) -> None:
    c = hops.nodes[-1]
    if not (c.repo / "summary.sig").exists():
        hops.propagate(*REFS)
    # Flatpak 1.14 verifies the summary when the remote is added: that already fails.
    env = home_env(tmp_path / "home")
    added = flatpak(
        env, "--user", "remote-add", f"--gpg-import={gpg_keys.other.keyring}", "lan", c.url, check=False
    )
    assert added.returncode != 0
    assert "signature" in added.stderr.lower() or "gpg" in added.stderr.lower(), added.stderr
    install = flatpak(env, "--user", "install", "-y", "--noninteractive", "lan", APP_ID, check=False)
    assert install.returncode != 0


def test_ostree_pull_with_gpg_verify_summary_through_two_hops(
    hops: Hops, tmp_path: Path, gpg_keys: GpgKeys
) -> None:
    b = hops.nodes[1]
    if not (b.repo / "summary.sig").exists():
        hops.propagate(*REFS)
    client = tmp_path / "client"
    ostree("init", f"--repo={client}", "--mode=archive")
    ostree(
        "remote", "add", f"--repo={client}", f"--gpg-import={gpg_keys.trusted.keyring}",
        "--set=gpg-verify-summary=true", "lan", b.url,
    )  # fmt: skip
    ostree("pull", f"--repo={client}", "lan", APP)
    assert ostree("rev-parse", f"--repo={client}", f"lan:{APP}").stdout.strip() == Repo.open(b.repo).read_ref(
        APP
    )


def test_unsigned_remote_ls_shows_sizes_from_a_partial_cache(tmp_path: Path, gpg_keys: GpgKeys) -> None:
    publisher = build_publisher(tmp_path / "unsigned", (), None)
    origin = serve_directory(publisher.repo)
    # The daemon follows the app and runtime ([origin] refs) from a round at start; not appstream,
    # so the upstream summary (which lists appstream too) is not served as is: lanshare's own
    # summary keeps xa.title and rebuilds xa.cache for what it holds.
    follow = f'[origin]\nurl = "{next(origin)}"\nrefs = ["{RUNTIME}", "{APP}"]\n'
    node = Node(tmp_path / "node", gpg_keys.trusted.keyring, follow)
    node.config.write_text(
        node.config.read_text().replace("[trust]\n", "[trust]\nrequire_signatures = false\n", 1)
    )
    try:
        node.start()
        deadline = time.monotonic() + 120
        while len(parse_summary(_get(node.url + "summary")).refs) < 2:
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.2)
        served = parse_summary(_get(node.url + "summary"))
        assert sorted(r.name for r in served.refs) == sorted([APP, RUNTIME])
        upstream = parse_summary((publisher.repo / "summary").read_bytes())
        assert served.extra_metadata["xa.title"] == upstream.extra_metadata["xa.title"]
        # Flatpak's cache entries, byte for byte, for the refs held.
        ours = served.extra_metadata["xa.cache"].value.value
        theirs = upstream.extra_metadata["xa.cache"].value.value
        for ref in (APP, RUNTIME):
            assert encode("(tts)", ours[ref]) == encode("(tts)", theirs[ref])
        # `remote-ls -d` through lanshare shows what it shows from the publisher: sizes included.
        listings = []
        for home, url in (("direct", f"file://{publisher.repo}"), ("lan", node.url)):
            env = home_env(tmp_path / home)
            flatpak(env, "--user", "remote-add", "--no-gpg-verify", "lan", url)
            listing = flatpak(env, "--user", "remote-ls", "-d", "lan").stdout
            listings.append(sorted(x for x in listing.splitlines() if APP in x or RUNTIME in x))
        assert len(listings[1]) == 2 and "bytes" in listings[1][0]
        assert listings[1] == listings[0]
    finally:
        node.stop()
        origin.close()


def test_serve_leaves_a_publishers_signed_out_of_date_summary_byte_identical(
    signed: Publisher, tmp_path: Path, gpg_keys: GpgKeys
) -> None:
    repo = tmp_path / "publisher-repo"
    shutil.copytree(signed.repo, repo, symlinks=True)
    copy = Publisher(tmp_path, repo, signed.sign, signed.collection, signed.env)
    shutil.copytree(signed.root / "app", tmp_path / "app", symlinks=True)
    copy.publish_app("out-of-date", update_summary=False)  # the ref moves, the summary does not
    before = _files(repo)
    assert {"summary.sig", "summary.idx", "summary.idx.sig"} <= before.keys()
    node = Node(tmp_path / "node", gpg_keys.trusted.keyring, f'[repo]\npath = "{repo}"\n')
    try:
        node.start()
        for name in SUMMARY_FILES:
            assert _get(node.url + name) == before[name]
        assert "signed summary" in node.log() and "out of date" in node.log()
        # The status page says so too (JSON and HTML).
        status = f"http://{(node.base / 'state' / 'status-address').read_text().strip()}/"
        warning = json.loads(_get(status + "api/v1/status"))["repo"]["summary_warning"]
        assert "out of date" in warning and APP in warning
        assert "Summary out of date" in _get(status).decode()
    finally:
        node.stop()
    assert _files(repo) == before


def test_rebuilt_flatpak_caches_equal_build_update_repos(signed: Publisher, tmp_path: Path) -> None:
    # A copy whose app is end-of-life (a sparse-cache entry); appstream sizes are summed over the tree.
    repo = tmp_path / "repo"
    shutil.copytree(signed.repo, repo, symlinks=True)
    eol = ("--end-of-life=use org.test.Other", "--end-of-life-rebase=org.test.Other")
    app = signed.root / "app"
    flatpak(signed.env, "build-export", *signed.collection, *signed.sign, *eol, repo, app, "stable")
    theirs = parse_summary((repo / "summary").read_bytes())
    refs = {r.name: r.checksum for r in theirs.refs}
    assert sorted(refs) == sorted(REFS)
    ours = flatpak_cache.build_caches(Repo.open(repo), refs, {})
    assert ours.keys() == {"xa.cache", "xa.sparse-cache", "xa.cache-version"}
    # Sizes and metadata byte for byte; the sparse entries' key order varies between Flatpak's
    # own runs (it reuses entries of the previous summary), so those compare as values.
    for key in ("xa.cache", "xa.cache-version"):
        assert encode("v", ours[key]) == encode("v", theirs.extra_metadata[key]), key
    assert ours["xa.sparse-cache"] == theirs.extra_metadata["xa.sparse-cache"]
    assert APP in ours["xa.sparse-cache"].value
