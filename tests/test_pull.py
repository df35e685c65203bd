"""The pull engine against real servers: nginx, python -m http.server, lanshare peers, hostile sources."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from bench.nginx import Nginx, NginxError, free_port, wait_for_port
from lanshare.index.db import open_index
from lanshare.index.models import Commit, Lease, Peer, Ref, Transfer, TransferState
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.ostree.summary import parse_summary
from lanshare.pull import PullError, PullOptions, PullResult, SourceSpec, Timeouts, TrustPolicy, pull
from lanshare.server.lan import create_lan_app
from lanshare.server.limits import LanLimits
from tests import hostile_servers as hs
from tests.conftest import build_tree, lanshare, ostree
from tests.gpg_fixtures import GpgKeys
from tests.publisher import BASE_TIME, NEWER, Published, commit, publish, signed_by

# Short enough that hostile servers cost a second at most, long enough for an honest loopback.
FAST = Timeouts(connect=2.0, read=2.0, low_speed_limit=2000, low_speed_time=0.5)


# --- publisher side ---------------------------------------------------------------------------------


def make_tree(root: Path, seed: int, files: int = 60, size: int = 3000) -> Path:
    """The conftest tree plus ``files`` incompressible files spread over a few directories."""
    build_tree(root, seed)
    rng = random.Random(seed)
    for i in range(files):
        path = root / "usr" / "share" / f"d{i % 7}" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(size // 2, size * 2)))
    return root


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, gpg_keys: GpgKeys) -> Published:
    """Build the publisher's history once for the whole module."""
    base = tmp_path_factory.mktemp("published")
    published = publish(base, gpg_keys, make_tree)
    trusted = signed_by(gpg_keys, gpg_keys.trusted)
    path = published.variant("wrong-binding")
    bound = commit(path, make_tree(base / "t5", 5), NEWER, *trusted, branch="os/other")
    Repo.open(path).write_ref("os/stable", bound)
    published.variants["wrong-binding"] = (path, bound)
    path = base / "other-collection"
    args = ("--collection-id", "org.example.Other", *trusted)
    published.variants["other-collection"] = (path, commit(path, make_tree(base / "t6", 6), NEWER, *args))
    return published


# --- servers ----------------------------------------------------------------------------------------


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Callable[[Path], str]]:
    """Start nginx serving a directory; returns its base URL."""
    servers: list[Nginx] = []

    def start(root: Path) -> str:
        try:
            servers.append(Nginx(root, tmp_path / f"nginx-{len(servers)}"))
        except NginxError as e:
            pytest.fail(f"{e}: .ci/setup installs it (apt-get install nginx-light)")
        return servers[-1].url

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def http_server() -> Iterator[Callable[[Path], str]]:
    """Start ``python -m http.server`` on a directory; returns its base URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(root: Path) -> str:
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(root),
            str(port),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_for_port(port, proc)
        return f"http://127.0.0.1:{port}/"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


# --- client side ------------------------------------------------------------------------------------


@dataclass
class Client:
    """A machine pulling: its repository, index and trust."""

    repo: Repo
    index: Engine
    config: Path
    keyring: Path

    def pull(self, *urls: str, target: str = "os/stable", ref: str | None = None) -> PullResult:
        """Pull from ``urls`` in order, with short timeouts, recording into the index."""
        options = PullOptions(trust=TrustPolicy(gpg_keyring=self.keyring), parallel=4, timeouts=FAST)
        plan = [SourceSpec(url) for url in urls]
        return asyncio.run(pull(self.repo, target, plan, ref=ref, options=options, index=self.index))

    def assert_clean(self, commit: str) -> None:
        """The commit is complete, every object verifies, every complete commit is trusted."""
        assert self.repo.missing_objects(commit) == []
        assert not self.repo.is_partial(commit)
        assert lanshare("fsck", "--repo", self.repo.path, "--gpg-keyring", self.keyring) == 0


@pytest.fixture
def client(tmp_path: Path, published: Published) -> Iterator[Client]:
    """A fresh client trusting the publisher's key."""
    base = tmp_path / "client"
    base.mkdir()
    config = base / "lanshare.toml"
    config.write_text(
        f'[repo]\npath = "{base / "repo"}"\n'
        f'[database]\nurl = "sqlite:///{base / "index.sqlite"}"\n'
        f'[trust]\ngpg_keyring = "{published.keyring}"\n'
        "[pull]\nparallel = 4\n"
    )
    index = open_index(f"sqlite:///{base / 'index.sqlite'}")
    yield Client(Repo.init(base / "repo"), index, config, published.keyring)
    index.dispose()


# --- honest sources ---------------------------------------------------------------------------------


def test_cli_pulls_a_gpg_signed_commit_from_nginx(
    client: Client, published: Published, nginx: Callable[[Path], str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = nginx(published.repo)
    capsys.readouterr()
    assert lanshare("pull", "os/stable", "--from", url, "--config", client.config, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["commit"] == published.v2 and report["ref"] == "os/stable"
    assert report["signed_by"] and report["objects_fetched"] > 60
    assert report["sources"][url]["bytes"] == report["bytes_fetched"] > 0
    assert client.repo.read_ref("os/stable") == published.v2
    client.assert_clean(published.v2)
    result = ostree("fsck", f"--repo={client.repo.path}")
    assert "no errors found" in result.stdout
    with Session(client.index) as session:
        [transfer] = session.scalars(select(Transfer)).all()
        assert transfer.state is TransferState.DONE and transfer.commit == published.v2
        assert transfer.objects_done == report["objects_fetched"] == transfer.objects_total
        assert session.scalars(select(Lease)).all() == []  # released at the end
        # The index knows the commit and the ref; the summary lists the ref for stock clients.
        assert session.get(Commit, published.v2) is not None
        assert session.get(Ref, ("os/stable", "")).commit == published.v2  # type: ignore[union-attr]
    summary = parse_summary((client.repo.path / "summary").read_bytes())
    assert {(r.name, r.checksum) for r in summary.refs} == {("os/stable", published.v2)}
    # A second pull finds nothing to do.
    capsys.readouterr()
    assert lanshare("pull", "os/stable", "--from", url, "--config", client.config, "--json") == 0
    again = json.loads(capsys.readouterr().out)
    assert again["up_to_date"] and again["objects_fetched"] == 0


def test_pull_from_python_http_server_then_update_fetches_only_new_objects(
    client: Client, published: Published, http_server: Callable[[Path], str]
) -> None:
    url = http_server(published.repo)
    first = client.pull(url, target=published.v1, ref="os/stable")
    assert client.repo.read_ref("os/stable") == published.v1 and first.previous is None
    client.assert_clean(published.v1)
    second = client.pull(url)
    assert second.commit == published.v2 and second.previous == published.v1
    closure = list(client.repo.iter_closure(published.v2))
    # Shared objects (the conftest tree's unchanged files, dirmeta) were not fetched again.
    assert second.objects_fetched < len(closure)
    client.assert_clean(published.v2)
    assert "no errors found" in ostree("fsck", f"--repo={client.repo.path}").stdout


def test_pull_from_a_lanshare_peer_in_batches(client: Client, published: Published) -> None:
    peer_repo = Repo.open(published.repo)
    big = next(f"{c}.{k.value}" for c, k in peer_repo.iter_closure(published.v2) if k is ObjectType.FILE)
    peer = hs.FakePeer(peer_repo, too_large=frozenset({big}))
    with peer.serve() as server:
        result = client.pull(server.url)
    assert result.commit == published.v2 and result.sources[f"fake-peer ({server.url})"].objects > 60
    # Many objects per request; the TOO_LARGE one came from the peer's archive layout.
    assert sum(peer.batches) >= result.objects_fetched and len(peer.batches) * 5 < result.objects_fetched
    assert [p for p in peer.archive.requests if p.endswith(".filez")] == [f"objects/{big[:2]}/{big[2:]}"]
    client.assert_clean(published.v2)
    with Session(client.index) as session:
        row = session.get(Peer, "fake-peer")
        assert row is not None and row.healthy and row.bytes_in == result.bytes_fetched


def test_batch_fallback_to_the_archive_layout_against_the_real_lan_server(
    client: Client, published: Published, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TOO_LARGE path of the test above, against lanshare's own LAN server instead of FakePeer."""
    from lanshare.server import batch

    peer_repo = Repo.open(published.repo)
    closure = list(peer_repo.iter_closure(published.v2))
    sizes = {(c, k): peer_repo.object_path(c, k).stat().st_size for c, k in closure}
    # A threshold that makes a few content objects too large for a batch, as 1 MiB files are.
    threshold = sorted(size for (_, k), size in sizes.items() if k is ObjectType.FILE)[-4]
    monkeypatch.setattr(batch, "BATCH_OBJECT_BYTES", threshold - 1)
    large = {
        f"objects/{c[:2]}/{c[2:]}.{k.value}"
        for (c, k), size in sizes.items()
        if size >= threshold and k is not ObjectType.COMMIT
    }
    archive_gets: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "GET" and request.path.startswith("/objects/"):
            archive_gets.append(request.path.removeprefix("/"))
        return await handler(request)

    app = create_lan_app(peer_repo, LanLimits(), "publisher-node")
    app.middlewares.append(record)
    with hs.ServerThread(app) as server:
        result = client.pull(server.url)
    assert result.commit == published.v2
    assert result.sources[f"publisher-node ({server.url})"].objects == result.objects_fetched > 60
    # The commit (and its signatures) is read first, from the archive layout; of the closure below
    # it, exactly the large objects came from there, everything else in batches.
    below = {p for p in archive_gets if not p.endswith((".commit", ".commitmeta"))}
    assert len(large) >= 4 and below == large
    client.assert_clean(published.v2)


def test_pull_from_the_real_lan_server(client: Client, published: Published) -> None:
    app = create_lan_app(Repo.open(published.repo), LanLimits(), "publisher-node")
    with hs.ServerThread(app) as server:
        result = client.pull(server.url)
    assert result.commit == published.v2
    assert result.sources[f"publisher-node ({server.url})"].objects == result.objects_fetched > 60
    client.assert_clean(published.v2)
    assert "no errors found" in ostree("fsck", f"--repo={client.repo.path}").stdout


def test_a_busy_server_is_retried_not_abandoned(client: Client, published: Published) -> None:
    busy = hs.ArchiveServer(published.repo, behaviour=hs.busy_once())
    with busy.serve() as server:
        result = client.pull(server.url)
    assert result.commit == published.v2 and result.abandoned == {}
    filez = [p for p in busy.requests if p.endswith(".filez")]
    assert len(filez) == 2 * len(set(filez)) > 60
    client.assert_clean(published.v2)


def test_pull_without_any_source_is_a_usage_error(client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    assert lanshare("pull", "os/stable", "--config", client.config) == 2
    assert "nothing to pull from" in capsys.readouterr().err


# --- hostile sources --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (hs.corrupt, "corrupt"),
        (hs.wrong_name, "checksum mismatch"),
        (hs.truncate, "truncated"),
        (hs.endless, "longer than"),
        (hs.slow_drip, "too slow"),
    ],
    ids=["corrupt", "wrong-name", "truncated", "endless", "slow-drip"],
)
def test_a_hostile_archive_source_is_abandoned_and_the_next_one_serves(
    client: Client,
    published: Published,
    nginx: Callable[[Path], str],
    behaviour: hs.Behaviour,
    reason: str,
) -> None:
    honest = nginx(published.repo)
    hostile = hs.ArchiveServer(published.repo, behaviour=behaviour)
    with hostile.serve() as server:
        result = client.pull(server.url, honest)
    assert result.commit == published.v2
    assert reason in result.abandoned[server.url]
    assert result.sources[honest].objects > 0
    client.assert_clean(published.v2)


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ("unsigned", "is not signed"),
        ("unknown-key", "not in the trusted keyring"),
        ("wrong-binding", "is bound to os/other, not to os/stable"),
    ],
)
def test_a_newer_commit_that_fails_a_trust_check_is_rejected(
    client: Client, published: Published, nginx: Callable[[Path], str], variant: str, reason: str
) -> None:
    hostile_repo, bad = published.variants[variant]
    hostile, honest = nginx(hostile_repo), nginx(published.repo)
    result = client.pull(hostile, honest)
    assert result.commit == published.v2
    [rejected] = result.rejected
    assert rejected.startswith(bad) and reason in rejected
    assert not client.repo.has_object(bad, ObjectType.COMMIT)
    client.assert_clean(published.v2)
    # Alone, the hostile source cannot move the ref at all.
    with pytest.raises(PullError, match=re.escape(reason)):
        Client(
            Repo.init(client.repo.path.parent / "alone"), client.index, client.config, client.keyring
        ).pull(hostile)


def test_the_ref_never_moves_backwards(
    client: Client, published: Published, nginx: Callable[[Path], str]
) -> None:
    old_repo, old = published.variants["downgrade"]
    stale, honest = nginx(old_repo), nginx(published.repo)
    client.pull(honest)
    result = client.pull(stale, honest)
    assert result.up_to_date and result.commit == published.v2
    assert any("refusing to move os/stable backwards" in r for r in result.rejected)
    with pytest.raises(PullError, match=f"refusing to move os/stable backwards: commit {old}"):
        client.pull(stale)
    assert client.repo.read_ref("os/stable") == published.v2


def test_of_two_commits_made_in_the_same_second_the_descendant_is_taken(
    client: Client, published: Published, nginx: Callable[[Path], str], gpg_keys: GpgKeys, tmp_path: Path
) -> None:
    # A publisher committing twice within a second: timestamps tie, only the parent link orders them.
    ahead = tmp_path / "ahead"
    shutil.copytree(published.repo, ahead, symlinks=True)
    trusted = signed_by(gpg_keys, gpg_keys.trusted)
    v3 = commit(ahead, make_tree(tmp_path / "t3", 3), BASE_TIME + 100, *trusted)
    result = client.pull(nginx(published.repo), nginx(ahead))  # the source with v2 answers first
    assert result.commit == v3
    assert client.repo.read_ref("os/stable") == v3


def test_a_commit_bound_to_another_collection_is_rejected(
    tmp_path: Path, published: Published, nginx: Callable[[Path], str], client: Client
) -> None:
    other_repo, other = published.variants["other-collection"]
    repo = Repo.init(tmp_path / "collection-client", "org.example.Mine")
    with pytest.raises(PullError, match=re.escape("bound to collection org.example.Other")):
        Client(repo, client.index, client.config, client.keyring).pull(nginx(other_repo))
    assert not repo.has_object(other, ObjectType.COMMIT)


@pytest.mark.parametrize(
    ("extra", "corrupt", "reason"),
    [(True, False, "broke the batch protocol"), (False, True, "served a corrupt object")],
    ids=["extra-objects", "corrupt-record"],
)
def test_a_peer_that_serves_bad_data_is_demoted_in_the_index(
    tmp_path: Path,
    client: Client,
    published: Published,
    nginx: Callable[[Path], str],
    extra: bool,
    corrupt: bool,
    reason: str,
) -> None:
    honest = nginx(published.repo)
    peer = hs.FakePeer(
        Repo.open(published.repo), node_id="bad-peer", extra_record=extra, corrupt_records=corrupt
    )
    with peer.serve() as server:
        result = client.pull(server.url, honest)
        assert result.commit == published.v2 and reason in result.abandoned[f"bad-peer ({server.url})"]
        client.assert_clean(published.v2)
        with Session(client.index) as session:
            row = session.get(Peer, "bad-peer")
            assert row is not None and not row.healthy and row.failures == 1
            assert row.backoff_until is not None and row.backoff_until.timestamp() > time.time()
        # While it backs off, the next pull tries it last: the honest source serves everything.
        peer.batches.clear()
        other = Client(Repo.init(tmp_path / "second"), client.index, client.config, client.keyring)
        again = other.pull(server.url, honest)
    assert again.commit == published.v2 and list(again.sources) == [honest] and peer.batches == []


def test_a_peer_that_serves_a_corrupt_commit_is_demoted_even_when_the_pull_fails(
    client: Client, published: Published
) -> None:
    peer = hs.FakePeer(Repo.open(published.repo), node_id="liar", archive_behaviour=hs.corrupt_commits)
    with peer.serve() as server, pytest.raises(PullError, match=r"\.commit: checksum mismatch"):
        client.pull(server.url)
    assert not client.repo.has_object(published.v2, ObjectType.COMMIT)
    with Session(client.index) as session:
        row = session.get(Peer, "liar")
        assert row is not None and not row.healthy and row.failures == 1


def test_when_every_source_fails_the_error_names_the_object_and_each_reason(
    client: Client, published: Published
) -> None:
    first = hs.ArchiveServer(published.repo, behaviour=hs.corrupt)
    second = hs.ArchiveServer(published.repo, behaviour=hs.truncate)
    with first.serve() as a, second.serve() as b, pytest.raises(PullError) as error:
        client.pull(a.url, b.url)
    message = str(error.value)
    assert re.search(r"no source could provide [0-9a-f]{64}\.filez", message)
    assert f"{a.url}: served a corrupt object" in message and f"{b.url}: truncated response" in message
    assert not client.repo.is_partial(published.v2) or client.repo.missing_objects(published.v2)
    assert client.repo.read_ref("os/stable") is None
    with Session(client.index) as session:
        [transfer] = session.scalars(select(Transfer)).all()
        assert transfer.state is TransferState.FAILED and "no source could provide" in (transfer.error or "")


# --- interruption -----------------------------------------------------------------------------------


def test_a_pull_killed_mid_way_resumes_without_downloading_again(
    tmp_path: Path, gpg_keys: GpgKeys, client: Client
) -> None:
    publisher = tmp_path / "big"
    tree = make_tree(tmp_path / "big-tree", 7, files=400, size=16000)
    head = commit(publisher, tree, BASE_TIME, *signed_by(gpg_keys, gpg_keys.trusted))
    total = sum(p.stat().st_size for p in (publisher / "objects").rglob("*.*"))
    # Throttled so the pull takes about three seconds.
    server = hs.ArchiveServer(publisher, rate=total // 3)
    argv = [sys.executable, "-m", "lanshare.cli", "pull", "os/stable", "--config", str(client.config)]
    with server.serve() as running:
        argv += ["--from", running.url]
        with (tmp_path / "stderr").open("wb") as stderr:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
        while sum(server.served.values()) < total * 0.4:
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = dict(server.served)
        written = sum(
            client.repo.object_path(c, k).stat().st_size
            for c, k, _ in client.repo.iter_objects()
            if k is not ObjectType.COMMIT_META
        )
        assert client.repo.is_partial(head) and client.repo.read_ref("os/stable") is None
        server.served.clear()
        server.rate = None
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    again = sum(n for path, n in server.served.items() if path in before)
    assert written > total * 0.1
    assert again < written * 0.1, f"re-downloaded {again} bytes of {written} already written"
    client.assert_clean(head)
