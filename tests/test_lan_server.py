"""The LAN listener in-process on 127.0.0.1: archive layout, hostile paths, batch API, info and limits."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient

from lanshare import wire
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.ostree.repo_summary import regenerate_summary
from lanshare.server import HOLDINGS, LEDGER, LanLimits, create_lan_app
from lanshare.server import holdings as holdings_module
from tests.conftest import build_tree, lanshare

NODE = "0123456789abcdef" * 2
SECRET = b"TOP-SECRET-NEXT-TO-THE-REPO"


@dataclass
class Served:
    """A repository with a checkpoint chain, private and mirrored refs, and a secret beside it."""

    repo: Repo
    secret: Path
    commits: dict[str, str]
    big: str  # the checksum of a ~200 KB incompressible .filez
    tree: Path


def _commit(repo: Path, branch: str, tree: Path, *extra: str) -> str:
    assert lanshare("commit", "--repo", repo, "--branch", branch, "--tree", tree, "--no-xattrs", *extra) == 0
    commit = Repo.open(repo).read_ref(branch)
    assert commit is not None
    return commit


@pytest.fixture
def served(tmp_path: Path) -> Served:
    return _build(tmp_path)


@pytest.fixture(scope="module")
def served_once(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """One repository for the read-only tests that run many times."""
    return _build(tmp_path_factory.mktemp("lan"))


def _build(tmp_path: Path) -> Served:
    base = tmp_path / "srv"
    path = base / "repo"
    secret = base / "secret"
    base.mkdir()
    secret.write_bytes(SECRET)
    trees = [build_tree(tmp_path / f"tree{n}", n) for n in range(4)]
    (trees[3] / "random.bin").write_bytes(os.urandom(200_000))
    commits = {
        "v1": _commit(path, "os/stable", trees[0], "--collection-id", "org.example.Os", "--version", "1"),
        "v2": _commit(path, "os/stable", trees[1], "--version", "2", "--checkpoint"),
        "v3": _commit(path, "os/stable", trees[2], "--version", "3", "--checkpoint-target", "os/stable-v2"),
    }
    commits["v4"] = _commit(
        path, "os/stable-v2", trees[3], "--version", "4", "--parent", "none",
        "--checkpoint-source", f"os/stable@{commits['v3']}",
    )  # fmt: skip
    repo = Repo.open(path)
    repo.write_ref("lanshare/pins/keep-v1", commits["v1"])
    repo.write_ref("app/tool", commits["v4"], collection_id="org.other.App")
    repo.mark_partial(commits["v1"])
    (path / "refs" / "remotes" / "origin" / "os").mkdir(parents=True)
    (path / "refs" / "remotes" / "origin" / "os" / "stable").write_text(commits["v1"] + "\n")
    (path / "tmp" / "tmpobject-staging").write_bytes(b"half-written")
    regenerate_summary(repo)
    big = max((p.stat().st_size, c) for c, kind, p in repo.iter_objects() if kind is ObjectType.FILE)[1]
    return Served(repo, secret, commits, big, trees[3])


async def _client(aiohttp_client: AiohttpClient, served: Served, **limits: Any) -> TestClient[Any, Any]:
    lan_limits = LanLimits(**limits)
    server = TestServer(create_lan_app(served.repo, lan_limits, NODE))
    # Started here: the fixture's server_kwargs never reach the runner, and the timeouts must.
    await server.start_server(**lan_limits.runner_kwargs())
    return await aiohttp_client(server)


def _app(client: TestClient[Any, Any]) -> web.Application:
    server = client.server
    assert isinstance(server, TestServer)
    return server.app


def _object_url(checksum: str, kind: ObjectType, prefix: str = "/") -> str:
    return f"{prefix}objects/{checksum[:2]}/{checksum[2:]}.{kind.value}"


async def _raw(client: TestClient[Any, Any], request: bytes) -> bytes:
    """Send raw bytes (no client-side URL normalisation) and return the whole response."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def _get(target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: peer\r\nConnection: close\r\n\r\n".encode("latin-1")


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.mark.asyncio
async def test_archive_files_are_served_byte_identical_at_root_and_repo_index_0(
    aiohttp_client: AiohttpClient, served: Served
) -> None:
    client = await _client(aiohttp_client, served)
    root = served.repo.path
    files = ["config", "summary", "refs/heads/os/stable", "refs/mirrors/org.other.App/app/tool"]
    files += [p.relative_to(root).as_posix() for _, _, p in served.repo.iter_objects()]
    for prefix in ("/", "/0/"):
        for name in files:
            response = await client.get(prefix + name)
            assert response.status == 200, name
            assert await response.read() == (root / name).read_bytes(), name
            assert response.headers["Content-Type"] == "application/octet-stream"


@pytest.mark.asyncio
async def test_caching_headers_etag_and_conditional_requests(
    aiohttp_client: AiohttpClient, served: Served
) -> None:
    client = await _client(aiohttp_client, served)
    commit_url = _object_url(served.commits["v2"], ObjectType.COMMIT)
    response = await client.get(commit_url)
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    etag = response.headers["ETag"]
    again = await client.get(commit_url, headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b"" and again.headers["ETag"] == etag
    changed = await client.get(commit_url, headers={"If-None-Match": '"other"'})
    assert changed.status == 200
    since = await client.get(commit_url, headers={"If-Modified-Since": response.headers["Last-Modified"]})
    assert since.status == 304
    for mutable in ("/summary", "/config", "/refs/heads/os/stable"):
        response = await client.get(mutable)
        assert response.headers["Cache-Control"] == "no-cache", mutable
        assert "Last-Modified" in response.headers and "ETag" in response.headers
    head = await client.head(commit_url)
    assert head.status == 200 and await head.read() == b""
    assert int(head.headers["Content-Length"]) == len(await response_bytes(client, commit_url))


async def response_bytes(client: TestClient[Any, Any], url: str) -> bytes:
    response = await client.get(url)
    assert response.status == 200
    return await response.read()


@pytest.mark.asyncio
async def test_range_requests(aiohttp_client: AiohttpClient, served: Served) -> None:
    client = await _client(aiohttp_client, served)
    url = _object_url(served.big, ObjectType.FILE)
    data = served.repo.object_path(served.big, ObjectType.FILE).read_bytes()
    size = len(data)
    cases = {"bytes=10-99": (10, 100), "bytes=-100": (size - 100, size), "bytes=1000-": (1000, size)}
    cases[f"bytes=5-{size * 2}"] = (5, size)
    for header, (start, end) in cases.items():
        response = await client.get(url, headers={"Range": header})
        assert response.status == 206, header
        assert await response.read() == data[start:end], header
        assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
    for unsatisfiable in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        response = await client.get(url, headers={"Range": unsatisfiable})
        assert response.status == 416, unsatisfiable
        assert response.headers["Content-Range"] == f"bytes */{size}"
    # Several ranges, or nonsense: the whole file (allowed by RFC 9110), never an error.
    for ignored in ("bytes=0-1,5-6", "items=0-1", "bytes=9-3"):
        response = await client.get(url, headers={"Range": ignored})
        assert response.status == 200 and await response.read() == data, ignored
    etag = (await client.head(url)).headers["ETag"]
    current = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert current.status == 206 and await current.read() == data[:10]
    stale = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert stale.status == 200 and await stale.read() == data


@pytest.mark.asyncio
async def test_absent_commitmeta_is_404(aiohttp_client: AiohttpClient, served: Served) -> None:
    client = await _client(aiohttp_client, served)
    for prefix in ("/", "/0/"):
        response = await client.get(_object_url(served.commits["v2"], ObjectType.COMMIT_META, prefix))
        assert response.status == 404
        response = await client.get(_object_url("ab" * 32, ObjectType.COMMIT, prefix))
        assert response.status == 404


_OPENED: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _OPENED is not None:
        _OPENED.append(os.fsdecode(args[0]) if isinstance(args[0], str | bytes | os.PathLike) else "")


_AUDITING = False


def _record_opens() -> list[str]:
    """Start recording every file the process opens (audit hooks cannot be removed: install once)."""
    global _OPENED, _AUDITING
    if not _AUDITING:
        sys.addaudithook(_audit)
        _AUDITING = True
    _OPENED = []
    return _OPENED


HOSTILE = [
    "/../secret",
    "/..%2fsecret",
    "/%2e%2e/secret",
    "/%2E%2E%2Fsecret",
    "/0/../secret",
    "/0/%2e%2e/secret",
    "/objects/../../secret",
    "/objects/..%2f..%2fsecret",
    "/objects/ab/" + "c" * 62 + ".filez/../../../../secret",
    "/refs/heads/os/stable/../../../../secret",
    "/refs/heads/..%2f..%2f..%2fsecret",
    "/deltas/../../secret",
    "/summary.sig/..%2f..%2fsecret",
    "/config%00",
    "/config%00.commit",
    "/objects%5c..%5c..%5csecret",
    "/objects\\..\\..\\secret",
    "//etc/passwd",
    "/etc/passwd",
    "/%2fetc%2fpasswd",
    "/tmp/tmpobject-staging",
    "/state/",
    "/.lock",
    "/refs/remotes/origin/os/stable",
    "/refs/heads/lanshare/pins/keep-v1",
    "/0/refs/heads/lanshare/pins/keep-v1",
    "/refs/mirrors/org.other.App/lanshare/pins/x",
    "/refs/heads/",
    "/refs/heads/.hidden",
    "/objects/AB/" + "C" * 62 + ".commit",
    "/objects/ab/cd.commit",
    "/objects/ab/" + "c" * 62 + ".exe",
    "/objects/" + "a" * 5000,
    "/refs/heads/" + "x/" * 3000 + "y",
    "/" + "x" * 9000,
    "/extensions",
    "/repo/config",
]


@pytest.mark.asyncio
@pytest.mark.parametrize("target", HOSTILE, ids=lambda t: t[:40])
async def test_hostile_paths_are_refused_without_touching_the_disk(
    aiohttp_client: AiohttpClient, served_once: Served, target: str
) -> None:
    client = await _client(aiohttp_client, served_once)
    assert _status(await _raw(client, _get("/config"))) == 200  # warm up: lazy imports happen now
    opened = _record_opens()
    try:
        response = await _raw(client, _get(target))
    finally:
        global _OPENED
        _OPENED = None
    assert _status(response) in (400, 404, 414, 431), response[:200]
    assert SECRET not in response and b"staging" not in response
    assert not [p for p in opened if not p.endswith((".py", ".pyc"))], opened


@pytest.mark.asyncio
async def test_raw_nul_and_absolute_form_targets(aiohttp_client: AiohttpClient, served: Served) -> None:
    client = await _client(aiohttp_client, served)
    for request in (_get("/config\x00"), _get(f"file://{served.secret}"), _get("http://peer/../secret")):
        response = await _raw(client, request)
        assert _status(response) in (400, 404), response[:200]
        assert SECRET not in response


@pytest.mark.asyncio
async def test_symlinks_planted_in_the_repository_are_not_followed(
    aiohttp_client: AiohttpClient, served: Served
) -> None:
    root = served.repo.path
    (root / "refs" / "heads" / "evil").symlink_to(served.secret)
    (root / "refs" / "heads" / "linkdir").symlink_to(served.secret.parent)
    (root / "summary").unlink()
    (root / "summary").symlink_to(served.secret)
    fifo = root / "refs" / "heads" / "fifo"
    os.mkfifo(fifo)
    client = await _client(aiohttp_client, served)
    for target in ("/refs/heads/evil", "/refs/heads/linkdir/secret", "/summary", "/refs/heads/fifo"):
        response = await client.get(target)
        assert response.status == 404, target
        assert SECRET not in await response.read()


@pytest.mark.asyncio
async def test_only_get_and_head_on_the_archive(aiohttp_client: AiohttpClient, served: Served) -> None:
    client = await _client(aiohttp_client, served)
    paths = [
        "/config",
        "/0/summary",
        "/refs/heads/os/stable",
        _object_url(served.commits["v1"], ObjectType.COMMIT),
    ]
    for path in [*paths, "/lanshare/v1/info"]:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            response = await client.request(method, path, data=b"x")
            assert response.status == 405, (method, path)
    for path in ("/lanshare/v1/admin", "/lanshare/v1/objects", "/lanshare/v2/info", "/status", "/metrics"):
        assert (await client.get(path)).status == 404, path
    assert (await client.options("/config")).status == 405


@pytest.mark.asyncio
async def test_batch_returns_objects_as_stored_and_absent_ones_marked(
    aiohttp_client: AiohttpClient, served: Served
) -> None:
    client = await _client(aiohttp_client, served)
    held = [(c, k) for c, k, _ in served.repo.iter_objects()]
    names = [wire.ObjectName(c, k) for c, k in held]
    absent = [
        wire.ObjectName(served.commits["v2"], ObjectType.COMMIT_META),
        wire.ObjectName("ee" * 32, ObjectType.FILE),
    ]
    request = names[:3] + absent + names[3:]
    response = await client.post("/lanshare/v1/objects", json={"objects": [str(n) for n in request]})
    assert response.status == 200
    assert response.headers["Content-Type"] == wire.BATCH_CONTENT_TYPE
    decoder = wire.BatchDecoder(request)
    records = []
    async for chunk in response.content.iter_chunked(65536):
        records += decoder.feed(chunk)
    decoder.finish()
    assert [r[0] for r in records] == request
    for name, data, status in records:
        if name in absent:
            assert (data, status) == (None, wire.ABSENT)
        else:
            assert status == wire.PRESENT
            assert data == served.repo.object_path(name.checksum, name.kind).read_bytes()


@pytest.mark.asyncio
async def test_batch_marks_objects_above_the_limit_too_large(
    aiohttp_client: AiohttpClient, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "MAX_OBJECT_BYTES", 100_000)
    client = await _client(aiohttp_client, served)
    request = [
        wire.ObjectName(served.big, ObjectType.FILE),
        wire.ObjectName(served.commits["v1"], ObjectType.COMMIT),
    ]
    response = await client.post("/lanshare/v1/objects", json={"objects": [str(n) for n in request]})
    decoder = wire.BatchDecoder(request)
    records = decoder.feed(await response.read())
    decoder.finish()
    assert [(r[0], r[2]) for r in records] == [(request[0], wire.TOO_LARGE), (request[1], wire.PRESENT)]


@pytest.mark.asyncio
async def test_batches_beyond_max_batch_streams_wait_their_turn(
    aiohttp_client: AiohttpClient, served: Served
) -> None:
    client = await _client(aiohttp_client, served, max_batch_streams=1, max_upload_rate=400_000)
    request = {"objects": [str(wire.ObjectName(served.big, ObjectType.FILE))]}
    first = await client.post("/lanshare/v1/objects", json=request)  # holds the only slot for ~0.5 s
    second = asyncio.create_task(client.post("/lanshare/v1/objects", json=request))
    await asyncio.sleep(0.2)
    assert not second.done()
    body = await first.read()
    assert await (await second).read() == body


@pytest.mark.asyncio
async def test_bad_batch_requests(aiohttp_client: AiohttpClient, served: Served) -> None:
    client = await _client(aiohttp_client, served)
    url = "/lanshare/v1/objects"
    name = str(wire.ObjectName(served.commits["v1"], ObjectType.COMMIT))
    bad = [b"{not json", b"[]", b'{"objects": "x"}', b'{"objects": [1]}', b'{"objects": ["../../secret"]}']
    bad += [json.dumps({"objects": [name.replace(".commit", ".exe")]}).encode(), b"[" * 100_000]
    for body in bad:
        response = await client.post(url, data=body, headers={"Content-Type": "application/json"})
        assert response.status == 400, body[:40]
    too_many = {"objects": [name] * (wire.MAX_BATCH_OBJECTS + 1)}
    assert (await client.post(url, json=too_many)).status == 413
    huge = json.dumps({"objects": [name] * 10, "pad": "x" * wire.MAX_REQUEST_BYTES}).encode()
    assert (await client.post(url, data=huge)).status == 413

    async def chunked() -> Any:
        for _ in range(5):
            yield b" " * (wire.MAX_REQUEST_BYTES // 4)

    assert (await client.post(url, data=chunked())).status == 413


@pytest.mark.asyncio
async def test_info_lists_refs_commits_and_checkpoints(aiohttp_client: AiohttpClient, served: Served) -> None:
    client = await _client(aiohttp_client, served)
    response = await client.get("/lanshare/v1/info")
    assert response.status == 200 and response.content_type == "application/json"
    info = await response.json()
    c = served.commits
    assert info["protocol"] == wire.VERSION and info["node_id"] == NODE
    assert info["collection_id"] == "org.example.Os"
    assert info["refs"] == {"os/stable": c["v3"], "os/stable-v2": c["v4"]}  # no lanshare/pins
    assert info["mirrors"] == {"org.other.App": {"app/tool": c["v4"]}}
    assert set(info["commits"]) == set(c.values())
    assert info["commits"][c["v1"]]["complete"] is False  # commitpartial: the commit object only
    assert all(info["commits"][c[v]]["complete"] for v in ("v2", "v3", "v4"))
    assert info["checkpoints"] == [c["v2"], c["v3"]] and info["newest_checkpoint"] == c["v3"]
    assert info["commits"][c["v3"]]["checkpoint_target"] == "os/stable-v2"
    assert info["commits"][c["v2"]]["parent"] == c["v1"] and info["commits"][c["v2"]]["version"] == "2"
    assert len(info["holdings_digest"]) == 64


@pytest.mark.asyncio
async def test_info_is_cached_until_refs_change(
    aiohttp_client: AiohttpClient, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    computed = []
    original = holdings_module.compute_info

    def counting(repo: Repo, node_id: str, *rest: Any) -> dict[str, Any]:
        computed.append(1)
        return original(repo, node_id, *rest)

    monkeypatch.setattr(holdings_module, "compute_info", counting)
    client = await _client(aiohttp_client, served)
    bodies = await asyncio.gather(*(response_bytes(client, "/lanshare/v1/info") for _ in range(20)))
    assert len(set(bodies)) == 1 and len(computed) == 1
    before = json.loads(bodies[0])
    served.repo.clear_partial(served.commits["v1"])
    after = json.loads(await response_bytes(client, "/lanshare/v1/info"))
    assert after["commits"][served.commits["v1"]]["complete"] is True
    assert after["holdings_digest"] != before["holdings_digest"]
    v5 = _commit(served.repo.path, "os/stable-v2", served.tree, "--version", "5")
    latest = json.loads(await response_bytes(client, "/lanshare/v1/info"))
    assert latest["refs"]["os/stable-v2"] == v5 and v5 in latest["commits"]
    assert len(computed) == 3
    _app(client)[HOLDINGS].invalidate()
    await response_bytes(client, "/lanshare/v1/info")
    assert len(computed) == 4


@pytest.mark.asyncio
async def test_requests_past_max_connections_get_503_with_retry_after(
    aiohttp_client: AiohttpClient, served: Served
) -> None:
    client = await _client(aiohttp_client, served, max_connections=2)
    held = []
    for _ in range(2):
        # A body that never completes keeps its request in flight.
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(b"POST /lanshare/v1/objects HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        held.append((reader, writer))
    deadline = time.monotonic() + 5
    while (busy := await client.get("/config")).status == 200:  # until both reach the handler
        assert time.monotonic() < deadline, "the limit never applied"
        await asyncio.sleep(0.02)
    assert busy.status == 503 and busy.headers["Retry-After"] == "1"
    for _, writer in held:
        writer.close()
    deadline = time.monotonic() + 5
    while (await client.get("/config")).status != 200:
        assert time.monotonic() < deadline, "slots were not released"
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_upload_rate_limit_slows_files_and_batches_per_peer(
    aiohttp_client: AiohttpClient, served: Served
) -> None:
    rate = 400_000
    client = await _client(aiohttp_client, served, max_upload_rate=rate)
    url = _object_url(served.big, ObjectType.FILE)
    expected = served.repo.object_path(served.big, ObjectType.FILE).read_bytes()
    started = time.monotonic()
    assert await response_bytes(client, url) == expected
    elapsed = time.monotonic() - started
    assert elapsed >= 0.8 * len(expected) / rate, elapsed
    # Two responses at once share the peer's bucket: twice the bytes, twice the time.
    started = time.monotonic()
    both = await asyncio.gather(response_bytes(client, url), response_bytes(client, url))
    elapsed = time.monotonic() - started
    assert list(both) == [expected, expected] and elapsed >= 0.8 * 2 * len(expected) / rate, elapsed
    name = wire.ObjectName(served.big, ObjectType.FILE)
    started = time.monotonic()
    response = await client.post("/lanshare/v1/objects", json={"objects": [str(name)]})
    body = await response.read()
    elapsed = time.monotonic() - started
    assert len(body) > 150_000 and elapsed >= 0.8 * len(body) / rate, elapsed


@pytest.mark.asyncio
async def test_bytes_served_are_counted_per_peer(aiohttp_client: AiohttpClient, served: Served) -> None:
    client = await _client(aiohttp_client, served)
    url = _object_url(served.big, ObjectType.FILE)
    size = len(await response_bytes(client, url))
    assert len(await (await client.get(url, headers={"Range": "bytes=0-99"})).read()) == 100
    # The handler counts once sendfile returns, which may be just after the client has the bytes.
    deadline = time.monotonic() + 2
    while (stats := _app(client)[LEDGER].snapshot()["127.0.0.1"]).bytes_out < size + 100:
        assert time.monotonic() < deadline, stats
        await asyncio.sleep(0.01)
    assert stats.bytes_out == size + 100 and stats.requests == 2


@pytest.mark.asyncio
async def test_slow_request_headers_do_not_pin_a_connection(
    aiohttp_client: AiohttpClient, served: Served
) -> None:
    client = await _client(aiohttp_client, served, keepalive_timeout=0.5)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    started = time.monotonic()
    writer.write(b"GET /config HTTP/1.1\r\nHost: p\r\nX-Slow: ")
    closed = False
    while time.monotonic() - started < 60:  # a generous bound: the outcome is what counts
        try:
            writer.write(b"a")
            await writer.drain()
            closed = await asyncio.wait_for(reader.read(1), 0.1) == b""
        except TimeoutError:
            continue
        except ConnectionError:
            closed = True
        if closed:
            break
    writer.close()
    assert closed


@pytest.mark.asyncio
async def test_slow_request_body_times_out(aiohttp_client: AiohttpClient, served: Served) -> None:
    client = await _client(aiohttp_client, served, body_timeout=0.3)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"POST /lanshare/v1/objects HTTP/1.1\r\nHost: p\r\nContent-Length: 50\r\n\r\n{")
    status_line = await asyncio.wait_for(reader.readline(), 30)
    assert _status(status_line) == 408
    # The unread rest of the body makes the connection unusable: it is closed, after a short linger.
    rest = await asyncio.wait_for(reader.read(), 5)
    assert rest.endswith(b"request body too slow")
    writer.close()
