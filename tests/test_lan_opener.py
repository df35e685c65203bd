"""The LAN listener's file opening: on the event loop from the kernel's caches, in a thread otherwise.

Every answer (whole file, Range, HEAD, 304, 404 for a symlink or a bad name) must be the same
whichever way the file was opened: on the loop (openat2 RESOLVE_CACHED and a RWF_NOWAIT read),
read in a thread after the page cache missed, or opened in a thread where openat2 is missing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from lanshare.ostree.objects import ObjectType
from lanshare.server import LEDGER, opener
from tests.test_lan_server import SECRET, Served, _app, _build, _client, _object_url


@pytest.fixture
def served(tmp_path: Path) -> Served:
    return _build(tmp_path)


def _small_object(served: Served) -> tuple[str, bytes]:
    """The URL and bytes of a small (read whole) but not tiny object of the served repository."""
    candidates = [
        (p.stat().st_size, checksum, kind, p)
        for checksum, kind, p in served.repo.iter_objects()
        if 200 <= p.stat().st_size <= opener.SMALL_FILE
    ]
    _, checksum, kind, path = max(candidates)
    return _object_url(checksum, kind), path.read_bytes()


class _Hops:
    """Counts what the event loop hands to worker threads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        loop = asyncio.get_running_loop()
        real = loop.run_in_executor

        def counting(executor: Executor | None, func: Callable[..., Any], *args: Any) -> Any:
            self.count += 1
            return real(executor, func, *args)

        monkeypatch.setattr(loop, "run_in_executor", counting)


async def _check_answers(client: TestClient[Any, Any], url: str, data: bytes) -> None:
    """Whole file, Range, HEAD, conditional GET: all as the archive layout promises."""
    response = await client.get(url)
    assert response.status == 200 and await response.read() == data
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    etag = response.headers["ETag"]
    ranged = await client.get(url, headers={"Range": "bytes=10-99"})
    assert ranged.status == 206 and await ranged.read() == data[10:100]
    assert ranged.headers["Content-Range"] == f"bytes 10-99/{len(data)}"
    suffix = await client.get(url, headers={"Range": "bytes=-7"})
    assert suffix.status == 206 and await suffix.read() == data[-7:]
    unsatisfiable = await client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert unsatisfiable.status == 416 and unsatisfiable.headers["Content-Range"] == f"bytes */{len(data)}"
    head = await client.head(url)
    assert head.status == 200 and await head.read() == b""
    assert int(head.headers["Content-Length"]) == len(data) and head.headers["ETag"] == etag
    cached = await client.get(url, headers={"If-None-Match": etag})
    assert cached.status == 304 and await cached.read() == b""
    stale_range = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert stale_range.status == 200 and await stale_range.read() == data


async def _check_refusals(client: TestClient[Any, Any], served: Served) -> None:
    """Bad names, absent objects and planted symlinks are 404, and the secret never leaves."""
    root = served.repo.path
    (root / "refs" / "heads" / "evil").symlink_to(served.secret)
    # A fan-out directory (objects/xx/) moved out of the repository and symlinked back in, the
    # object file in it now holding the secret.
    checksum = next(c for c, kind, _ in served.repo.iter_objects() if kind is ObjectType.FILE)
    outside = served.secret.parent / "fanout"
    (root / "objects" / checksum[:2]).rename(outside)
    (outside / f"{checksum[2:]}.filez").write_bytes(SECRET)
    (root / "objects" / checksum[:2]).symlink_to(outside)
    targets = [
        "/refs/heads/evil",
        _object_url(checksum, ObjectType.FILE),
        _object_url("ab" * 32, ObjectType.COMMIT),
        "/objects/" + checksum[:2] + "/../../secret",
        "/objects/" + checksum[:2] + "/" + checksum[2:] + ".exe",
        "/tmp/tmpobject-staging",
    ]
    for target in targets:
        response = await client.get(target)
        assert response.status == 404, target
        assert SECRET not in await response.read(), target


@pytest.mark.asyncio
async def test_cached_files_are_answered_on_the_event_loop(
    aiohttp_client: AiohttpClient, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    if opener.cached_opener(os.fspath(served.repo.path)) is None:
        pytest.skip("this kernel has no openat2 with RESOLVE_CACHED (Linux 5.12)")
    client = await _client(aiohttp_client, served)
    url, data = _small_object(served)
    assert (await client.get(url)).status == 200  # now its inode and pages are surely cached
    hops = _Hops(monkeypatch)
    await _check_answers(client, url, data)
    assert hops.count == 0, "a cached file went through a worker thread"
    await _check_refusals(client, served)


@pytest.mark.asyncio
async def test_a_file_not_in_the_page_cache_is_read_in_a_thread(
    aiohttp_client: AiohttpClient, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await _client(aiohttp_client, served)
    url, data = _small_object(served)

    def would_block(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
        raise BlockingIOError(11, "not in the page cache")

    monkeypatch.setattr(os, "preadv", would_block)
    hops = _Hops(monkeypatch)
    await _check_answers(client, url, data)
    assert hops.count > 0 or not _opens_on_loop(client)
    await _check_refusals(client, served)


@pytest.mark.asyncio
async def test_a_file_only_partly_in_the_page_cache_is_read_whole_in_a_thread(
    aiohttp_client: AiohttpClient, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await _client(aiohttp_client, served)
    url, data = _small_object(served)
    real = os.preadv

    def first_pages_only(fd: int, buffers: list[bytearray], offset: int, flags: int = 0) -> int:
        # RWF_NOWAIT stops at the first page not in memory: here, halfway.
        whole = os.fstat(fd).st_size
        got = real(fd, [memoryview(buffers[0])[: whole // 2]], offset, flags)
        return int(got)

    monkeypatch.setattr(os, "preadv", first_pages_only)
    await _check_answers(client, url, data)


@pytest.mark.asyncio
async def test_without_openat2_files_are_opened_in_threads_with_the_same_answers(
    aiohttp_client: AiohttpClient, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(opener, "cached_opener", lambda probe: None)
    client = await _client(aiohttp_client, served)
    assert not _opens_on_loop(client)
    url, data = _small_object(served)
    hops = _Hops(monkeypatch)
    await _check_answers(client, url, data)
    assert hops.count >= 7  # one per request
    big = _object_url(served.big, ObjectType.FILE)
    expected = served.repo.object_path(served.big, ObjectType.FILE).read_bytes()
    ranged = await client.get(big, headers={"Range": "bytes=100000-"})
    assert ranged.status == 206 and await ranged.read() == expected[100000:]
    await _check_refusals(client, served)


@pytest.mark.asyncio
async def test_a_small_file_is_counted_once_per_response(
    aiohttp_client: AiohttpClient, served: Served
) -> None:
    client = await _client(aiohttp_client, served)
    url, data = _small_object(served)
    assert len(await (await client.get(url)).read()) == len(data)
    assert len(await (await client.get(url, headers={"Range": "bytes=0-9"})).read()) == 10
    assert await (await client.head(url)).read() == b""
    stats = _app(client)[LEDGER].snapshot()["127.0.0.1"]
    assert stats.requests == 3 and stats.bytes_out == len(data) + 10


def _opens_on_loop(client: TestClient[Any, Any]) -> bool:
    from lanshare.server.lan import _OPENER

    return _app(client)[_OPENER].on_loop
