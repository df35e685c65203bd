"""A table of hostile HTTP requests against a real ``lanshare serve`` LAN listener.

tests/test_lan_server.py already covers, in-process: plain and %2e-encoded ``..``, backslashes,
raw NUL, symlinks, methods other than GET/HEAD, single-range edge cases, batch bodies over the
size and count limits, slow headers and a slow body with short timeouts.  This file adds what only
a real process shows (its resident memory, its file descriptors, its one event loop) and the
variants not covered there: double encoding, overlong UTF-8, encoded NUL, absurd ranges, a batch
that asks for the same large object a thousand times, odd JSON, trickled headers from hundreds of
clients and thousands of idle connections.  Every request must get an answer or a close, the
daemon must keep answering an honest client, and its memory must stay bounded.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lanshare import wire
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from tests.conftest import build_tree, lanshare
from tests.test_serve import Daemon, _start, _stop

SECRET = b"HOSTILE-HTTP-SECRET-BESIDE-THE-REPO"
BIG_SIZE = 1_000_000


@dataclass
class Target:
    """A running daemon serving a small repository, with a secret file next to the repository."""

    daemon: Daemon
    host: str
    port: int
    repo: Repo
    commit: str
    big: str  # checksum of an incompressible ~1 MB .filez (batched)
    huge: str  # checksum of an incompressible ~3 MB .filez (too large to batch)

    @property
    def pid(self) -> int:
        return self.daemon.proc.pid


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    _raise_fd_limit()
    base = tmp_path_factory.mktemp("hostile")
    (base / "secret").write_bytes(SECRET)
    tree = build_tree(base / "tree", 1)
    (tree / "random.bin").write_bytes(os.urandom(BIG_SIZE))
    (tree / "huge.bin").write_bytes(os.urandom(3 * BIG_SIZE))
    path = base / "repo"
    assert (
        lanshare("commit", "--repo", path, "--branch", "os/stable", "--tree", tree, "--no-xattrs",
                 "--collection-id", "org.example.Os") == 0
    )  # fmt: skip
    repo = Repo.open(path)
    commit = repo.read_ref("os/stable")
    assert commit is not None
    sizes = sorted((p.stat().st_size, c) for c, k, p in repo.iter_objects() if k is ObjectType.FILE)
    big, huge = sizes[-2][1], sizes[-1][1]
    (base / "d").mkdir()
    daemon = _start(base / "d", path)
    host, port = daemon.url.removeprefix("http://").strip("/").rsplit(":", 1)
    yield Target(daemon, host, int(port), repo, commit, big, huge)
    assert _stop(daemon) == 0, daemon.log.read_text()
    log = daemon.log.read_text()
    # Dozens of malformed requests: one warning line in the journal, no traceback.
    assert "Traceback" not in log and log.count("malformed request (") == 1, log


def _raise_fd_limit() -> None:
    """Thousands of sockets need descriptors on both ends; the daemon inherits this process's limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _request(t: Target, raw: bytes, timeout: float = 20) -> bytes:
    """Send raw bytes (no client-side normalisation) and read the whole answer until the close."""
    with socket.create_connection((t.host, t.port), timeout=timeout) as s:
        s.sendall(raw)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: peer", "Connection: close", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _post(body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"POST /lanshare/v1/objects HTTP/1.1\r\nHost: peer\r\nConnection: close\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1."), response[:200]
    return int(response.split(b" ", 2)[1])


def _body(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


def _header(response: bytes, name: str) -> str | None:
    head = response.partition(b"\r\n\r\n")[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def _object_path(checksum: str, kind: ObjectType) -> str:
    return f"/objects/{checksum[:2]}/{checksum[2:]}.{kind.value}"


def _assert_alive(t: Target) -> None:
    response = _request(t, _get("/config"))
    assert _status(response) == 200 and _body(response) == (t.repo.path / "config").read_bytes()


TRAVERSAL = [
    "/%252e%252e/secret",  # double-encoded ..
    "/%252e%252e%252fsecret",
    "/0/%252e%252e%252f%252e%252e%252fsecret",
    "/objects/%252e%252e%252f%252e%252e%252fsecret",
    "/%25%32%65%25%32%65/secret",  # %2e spelled out as %25%32%65
    "/%c0%ae%c0%ae/secret",  # overlong UTF-8 dots
    "/%c0%ae%c0%ae%c0%afsecret",
    "/%e0%80%ae%e0%80%ae/secret",
    "/..%c0%afsecret",
    "/..%255csecret",  # double-encoded backslash
    "/..%5c..%5csecret",
    "/objects/..\\..\\..\\secret",
    "/0\\..\\secret",
    "/config%00/../secret",
    "/%00",
    "/summary%2500",
    "/objects/ab/%00" + "c" * 61 + ".commit",
    "/refs/heads/os/stable%2f..%2f..%2f..%2f..%2fsecret",
    "/refs/heads/os%2fstable",
    "/refs/mirrors/..%2f..%2f..%2fsecret/x",
    "/./././../secret",
    "/.%2e/secret",
    "/%2e./secret",
    "/" + "../" * 200 + "etc/passwd",
    "/" + "%2e%2e%2f" * 200 + "etc/passwd",
    "/0/0/0/config",
    "/%2fetc%2fshadow",
    "/proc/self/environ",
    "/objects/ab/" + "c" * 62 + ".commit%00.txt",
    "/refs/heads/os/stable;/../../secret",
    "/refs/heads/os/stable?/../../../secret",
    "/refs/heads/os/stable#/../../../secret",
]


@pytest.mark.parametrize("path", TRAVERSAL, ids=lambda p: p[:48])
def test_traversal_variants_never_reach_a_file_outside_the_repository(target: Target, path: str) -> None:
    response = _request(target, _get(path))
    status = _status(response)
    # Only a request that normalises to a real repository file may succeed, with that file's bytes.
    assert status in (200, 400, 404, 414), response[:300]
    assert SECRET not in response and b"root:" not in response and b"PATH=" not in response
    if status == 200:
        served = ("config", "summary", "refs/heads/os/stable")
        assert _body(response) in {(target.repo.path / n).read_bytes() for n in served}


def test_absurd_ranges_are_answered_and_bounded(target: Target) -> None:
    path = _object_path(target.big, ObjectType.FILE)
    data = target.repo.object_path(target.big, ObjectType.FILE).read_bytes()
    size = len(data)
    whole = {
        "bytes=0-1,2-3",  # multi-range: the whole file, as RFC 9110 allows
        "bytes=" + ",".join(f"{i}-{i}" for i in range(800)),  # 800 ranges, under the header limit
        "bytes=-5-10",
        "bytes=--1",
        "bytes=-",
        "bytes=5-2",
        "bytes= 0-1",
        "bytes=0x10-0x20",
        "bytes=1e3-2e3",
        "bytes=\u0661-\u0662",  # Arabic-Indic digits: \d would match them without re.ASCII
        "bits=0-1",
        "bytes",
        "",
    }
    for value in whole:
        response = _request(target, _get(path, f"Range: {value}".encode().decode("latin-1")))
        assert _status(response) == 200 and _body(response) == data, value[:40]
    partial = {
        "bytes=0-0": (0, 1),
        f"bytes=0-{10**30}": (0, size),
        f"bytes=-{10**30}": (0, size),
        f"bytes={size - 1}-": (size - 1, size),
        "bytes=00000000000000000000000000000000007-8": (7, 9),
    }
    for value, (start, end) in partial.items():
        response = _request(target, _get(path, f"Range: {value}"))
        assert _status(response) == 206, value
        assert _body(response) == data[start:end], value
    for value in (f"bytes={size}-", f"bytes={10**30}-", f"bytes={10**30}-{10**31}", "bytes=-0"):
        response = _request(target, _get(path, f"Range: {value}"))
        assert _status(response) == 416 and _header(response, "Content-Range") == f"bytes */{size}", value
    # 10,000 ranges do not fit in a header line: refused before any handler runs.
    ten_thousand = "bytes=" + ",".join(f"{i}-{i}" for i in range(10_000))
    response = _request(target, _get(path, f"Range: {ten_thousand}"))
    assert _status(response) in (400, 431) and data not in response
    # As many Range headers as fit in the header block: still one answer, the whole file or 416.
    many = [f"Range: bytes={i}-{i}" for i in range(300)]
    response = _request(target, _get(path, *many))
    assert _status(response) in (200, 206, 400, 416)
    _assert_alive(target)


def test_malformed_json_and_odd_batch_bodies_get_400(target: Target) -> None:
    name = f"{target.commit}.commit"
    bad = [
        b"",
        b"\xff\xfe{",
        b'{"objects": null}',
        b'{"objects": {"a": 1}}',
        b'{"objects": [null]}',
        b'{"objects": [true]}',
        b'{"objects": [1e999999]}',
        b'{"objects": ["' + b"a" * 100_000 + b'.commit"]}',
        b'{"objects": ["' + target.commit.encode() + b'.commit\\u0000"]}',
        b'{"objects": ["' + target.commit.upper().encode() + b'.commit"]}',
        b'{"objects": ["/objects/../../secret"]}',
        b'{"objects": NaN}',
        b'{"objects": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}",
        b'{"objects": ' + b'{"x":' * 20_000 + b"1" + b"}" * 20_000 + b"}",
        b'"' + b"\\ud800" * 10_000 + b'"',
        json.dumps({"objects": [name]}).encode()[:-1],  # truncated
    ]
    for body in bad:
        response = _request(target, _post(body))
        assert _status(response) == 400, (body[:60], response[:300])
        assert SECRET not in response
    # Duplicate keys: the last one wins, as in any JSON parser; the answer is a normal batch.
    response = _request(target, _post(b'{"objects": ["x"], "objects": ["' + name.encode() + b'"]}'))
    assert _status(response) == 200
    # A body announced far larger than allowed is refused without being read.
    huge = b"POST /lanshare/v1/objects HTTP/1.1\r\nHost: p\r\nContent-Length: 10000000000\r\n\r\n{"
    assert _status(_request(target, huge)) == 413
    # Broken chunked encoding.
    chunked = (
        b"POST /lanshare/v1/objects HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\nfffffffffffffffffffff\r\n{\r\n0\r\n\r\n"
    )
    assert _status(_request(target, chunked)) in (400, 413)
    both = (
        b"POST /lanshare/v1/objects HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 3\r\nConnection: close\r\n\r\n0\r\n\r\n"
    )
    assert _status(_request(target, both)) == 400  # request smuggling shape
    _assert_alive(target)


def test_huge_batch_of_one_large_object_repeated_streams_with_bounded_memory(target: Target) -> None:
    name = wire.ObjectName(target.big, ObjectType.FILE)
    names = [name] * wire.MAX_BATCH_OBJECTS  # ~1 GB of records from a 70 KB request
    body = json.dumps({"objects": [str(n) for n in names]}).encode()
    before = _rss_kib(target.pid)
    peak = before
    expected = target.repo.object_path(target.big, ObjectType.FILE).read_bytes()
    # Two at once, read slowly at first: the encoder must wait for the network, not buffer ahead.
    socks = []
    for _ in range(2):
        s = socket.create_connection((target.host, target.port), timeout=60)
        s.sendall(_post(body))
        socks.append(s)
    time.sleep(1)
    peak = max(peak, _rss_kib(target.pid))
    for s in socks:
        decoder = wire.BatchDecoder(names)
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += s.recv(65536)
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        chunked = b"transfer-encoding: chunked" in head.lower()
        stream = _Dechunk() if chunked else None
        count = 0
        received = 0
        pieces = [rest]
        while True:
            for piece in pieces:
                payload = stream.feed(piece) if stream is not None else piece
                for _name, data, status in decoder.feed(payload):
                    assert status == wire.PRESENT and data == expected
                    count += 1
            if count == len(names) or (stream is not None and stream.done):
                break
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            received += len(chunk)
            pieces = [chunk]
            if received % (64 << 20) < len(chunk):
                peak = max(peak, _rss_kib(target.pid))
        s.close()
        assert count == len(names)
    peak = max(peak, _rss_kib(target.pid))
    # Four encoders at most, each holding about two 1 MiB groups: far below the gigabyte requested.
    assert peak - before < 200 * 1024, (before, peak)
    _assert_alive(target)


def test_objects_over_a_mib_are_not_batched_but_served_by_the_archive_path(target: Target) -> None:
    """A batch holds every object it carries in memory several times: big ones go by sendfile."""
    names = [wire.ObjectName(target.huge, ObjectType.FILE), wire.ObjectName(target.big, ObjectType.FILE)]
    response = _request(target, _post(json.dumps({"objects": [str(n) for n in names]}).encode()))
    assert _status(response) == 200
    body = _body(response)
    if _header(response, "Transfer-Encoding") == "chunked":
        body = _Dechunk().feed(body)
    decoder = wire.BatchDecoder(names)
    records = decoder.feed(body)
    decoder.finish()
    assert [(r[0], r[2]) for r in records] == [(names[0], wire.TOO_LARGE), (names[1], wire.PRESENT)]
    path = _object_path(target.huge, ObjectType.FILE)
    whole = _request(target, _get(path))
    assert _body(whole) == target.repo.object_path(target.huge, ObjectType.FILE).read_bytes()


class _Dechunk:
    """Just enough of HTTP/1.1 chunked transfer decoding to read a streamed batch."""

    def __init__(self) -> None:
        self.buffer = b""
        self.remaining = 0
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = []
        while self.buffer and not self.done:
            if self.remaining:
                take = self.buffer[: self.remaining]
                out.append(take)
                self.remaining -= len(take)
                self.buffer = self.buffer[len(take) :]
                continue
            line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                break
            if line == b"":
                self.buffer = rest
                continue
            size = int(line.split(b";")[0], 16)
            self.buffer = rest
            if size == 0:
                self.done = True
            self.remaining = size
        return b"".join(out)


async def _open_many(host: str, port: int, count: int, first: bytes) -> list[asyncio.StreamWriter]:
    writers = []
    for start in range(0, count, 200):
        opened = await asyncio.gather(
            *(asyncio.open_connection(host, port) for _ in range(min(200, count - start)))
        )
        for _, writer in opened:
            if first:
                writer.write(first)
            writers.append(writer)
    return writers


async def _trickle_and_probe(t: Target, slow: int, idle: int) -> tuple[list[int], int]:
    """Hold ``idle`` silent connections and ``slow`` ones trickling headers; probe meanwhile."""
    trickling = await _open_many(t.host, t.port, slow, b"GET /config HTTP/1.1\r\nHost: p\r\n")
    silent = await _open_many(t.host, t.port, idle, b"")
    peak = _rss_kib(t.pid)
    statuses = []
    try:
        for round_ in range(6):
            for n, writer in enumerate(trickling):
                writer.write(f"X-{round_}-{n}: a\r\n".encode())
            reader, writer = await asyncio.open_connection(t.host, t.port)
            writer.write(_get("/lanshare/v1/info"))
            line = await asyncio.wait_for(reader.readline(), 30)
            statuses.append(int(line.split(b" ", 2)[1]))
            writer.close()
            peak = max(peak, _rss_kib(t.pid))
            await asyncio.sleep(0.3)
    finally:
        for writer in trickling + silent:
            writer.close()
    return statuses, peak


def test_slowloris_and_thousands_of_connections_leave_the_listener_responsive(target: Target) -> None:
    _assert_alive(target)
    before = _rss_kib(target.pid)
    statuses, peak = asyncio.run(_trickle_and_probe(target, slow=300, idle=3000))
    # An honest client is answered each time, within the 30 s deadline, while 3,300 sockets are held.
    assert statuses == [200] * 6
    assert peak - before < 150 * 1024, (before, peak)
    _assert_alive(target)


def test_thousands_of_requests_at_once_are_answered_or_turned_away(target: Target) -> None:
    """3,000 full requests at once: past max_connections in flight, 503 + Retry-After, never a hang."""

    async def burst() -> list[int]:
        async def one() -> int:
            reader, writer = await asyncio.open_connection(target.host, target.port)
            try:
                writer.write(_get(_object_path(target.commit, ObjectType.COMMIT)))
                line = await asyncio.wait_for(reader.readline(), 60)
                await reader.read()
                return int(line.split(b" ", 2)[1])
            finally:
                writer.close()

        results: list[int] = []
        for _batch in range(6):
            results += await asyncio.gather(*(one() for _ in range(500)))
        return results

    before = _rss_kib(target.pid)
    statuses = asyncio.run(burst())
    assert set(statuses) <= {200, 503} and statuses.count(200) > 0
    assert _rss_kib(target.pid) - before < 150 * 1024
    _assert_alive(target)
