"""The LAN listener's file bodies on each event loop the daemon may run on: asyncio's and uvloop's.

Files over the in-memory size go out with the kernel's sendfile where the loop has it (asyncio's)
and are read and written where it does not (uvloop's): both must send exactly the bytes asked for,
count them per peer, and drop a peer that stops reading.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web

from lanshare import event_loop
from lanshare.ostree.repo import Repo
from lanshare.server import LEDGER, LanLimits, create_lan_app
from lanshare.server.limits import SENDFILE_PIECE
from lanshare.server.opener import SMALL_FILE
from tests.needs import missing

NODE = "0123456789abcdef" * 2
CHECKSUM = "ab" + "cd" * 31
TARGET = f"/objects/{CHECKSUM[:2]}/{CHECKSUM[2:]}.filez"
# Past the in-memory size, past a sendfile piece and over several copy chunks.
SIZE = SENDFILE_PIECE + 300_000

LoopFactory = Callable[[], asyncio.AbstractEventLoop] | None


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request: pytest.FixtureRequest) -> LoopFactory:
    if request.param == "asyncio":
        return None
    factory = event_loop.loop_factory()
    if factory is None:
        missing("uvloop is not installed (a dependency on Linux)")
    return factory


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Repo, bytes]:
    """An archive repository holding one incompressible object of SIZE bytes (not a real .filez:
    the listener serves bytes, it does not read them)."""
    repo = Repo.init(tmp_path_factory.mktemp("loops") / "repo")
    data = os.urandom(SIZE)
    path = repo.path / TARGET.lstrip("/")
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    assert SIZE > SMALL_FILE
    return repo, data


def _serve(
    factory: LoopFactory,
    repo: Repo,
    limits: LanLimits,
    client: Callable[[int, web.AppRunner], Awaitable[None]],
) -> None:
    """Run the LAN listener on a loop made by ``factory`` (None: asyncio's) and ``client`` against it."""

    async def main() -> None:
        app = create_lan_app(repo, limits, NODE)
        runner = web.AppRunner(app, **limits.runner_kwargs())
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            await client(runner.addresses[0][1], runner)
        finally:
            await runner.cleanup()

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


async def _fetch(port: int, request: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lowercase names) and body of one request on its own connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"{request}\r\nHost: peer\r\nConnection: close\r\n\r\n".encode())
        response = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("rate", [None, 400_000_000], ids=["sendfile", "rate-limited"])
def test_large_files_whole_and_ranges_are_byte_exact(
    loop_factory: LoopFactory, served: tuple[Repo, bytes], rate: int | None
) -> None:
    repo, data = served

    async def client(port: int, runner: web.AppRunner) -> None:
        app = runner.app
        status, headers, body = await _fetch(port, f"GET {TARGET} HTTP/1.1")
        assert (status, int(headers["content-length"])) == (200, SIZE)
        assert body == data
        start, end = 70_000, SENDFILE_PIECE + 12_345  # across a sendfile piece
        status, headers, body = await _fetch(port, f"GET {TARGET} HTTP/1.1\r\nRange: bytes={start}-{end}")
        assert status == 206
        assert headers["content-range"] == f"bytes {start}-{end}/{SIZE}"
        assert body == data[start : end + 1]
        status, headers, body = await _fetch(port, f"GET {TARGET} HTTP/1.1\r\nRange: bytes=-1000")
        assert (status, body) == (206, data[-1000:])
        status, headers, body = await _fetch(port, f"HEAD {TARGET} HTTP/1.1")
        assert (status, int(headers["content-length"]), body) == (200, SIZE, b"")
        status, _, body = await _fetch(port, f"GET {TARGET} HTTP/1.1\r\nIf-None-Match: {headers['etag']}")
        assert (status, body) == (304, b"")
        stats = app[LEDGER].snapshot()["127.0.0.1"]
        assert stats.requests == 5
        assert stats.bytes_out == SIZE + (end + 1 - start) + 1000

    _serve(loop_factory, repo, LanLimits(max_upload_rate=rate), client)


def test_a_peer_that_stops_reading_is_dropped(loop_factory: LoopFactory, served: tuple[Repo, bytes]) -> None:
    repo, data = served
    # The file is bigger than all the socket buffers between the two ends can hold.
    stalled = repo.path / "objects" / "ef" / ("01" * 31 + ".filez")
    stalled.parent.mkdir(exist_ok=True)
    stalled.write_bytes(data * 4)

    async def client(port: int, runner: web.AppRunner) -> None:
        server = runner.server
        assert server is not None
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        path = f"/objects/ef/{stalled.name}"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: peer\r\n\r\n".encode())
        # Not reading: the server's send stalls past send_timeout, and it drops the connection.
        async with asyncio.timeout(60):
            while not server.connections:
                await asyncio.sleep(0.05)
            while server.connections:
                await asyncio.sleep(0.05)
        received = 0
        try:
            while chunk := await asyncio.wait_for(reader.read(1 << 20), 60):
                received += len(chunk)
        except ConnectionResetError:
            pass  # dropped (a reset, or an end of stream before Content-Length: both tell the peer)
        writer.close()
        assert received < len(data) * 4
        assert runner.app[LEDGER].snapshot()["127.0.0.1"].bytes_out < len(data) * 4
        # The listener still answers everyone else.
        status, _, body = await _fetch(port, f"GET {TARGET} HTTP/1.1")
        assert (status, body) == (200, data)

    try:
        _serve(loop_factory, repo, LanLimits(send_timeout=0.5), client)
    finally:
        stalled.unlink()


def test_the_daemon_runs_on_uvloop_where_installed() -> None:
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    expected = "asyncio" if event_loop.loop_factory() is None else "uvloop"
    assert event_loop.run(loop_module()).partition(".")[0] == expected
