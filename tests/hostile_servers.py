"""Real HTTP servers on 127.0.0.1 for pull tests: an archive server that can misbehave, and a fake peer.

Each runs an aiohttp application in its own thread and event loop, so a test can drive a pull
with ``asyncio.run`` or in a subprocess while the server keeps serving.  Servers count the bytes
they write per path, which is how tests measure what a pull downloaded.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

from aiohttp import web

from lanshare import wire
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo

# (server, request, path, data) → a response to send instead of the honest one, or None.
Behaviour = Callable[["ArchiveServer", web.Request, str, bytes], Awaitable[web.StreamResponse | None]]


class ServerThread:
    """Serve an aiohttp application on 127.0.0.1 (an ephemeral port) from a background thread."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported to the test by __enter__
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # Hostile handlers may never finish on their own: do not wait for them at shutdown.
        runner = web.AppRunner(self.app, shutdown_timeout=0.2, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/"
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()


class ArchiveServer:
    """The archive layout of a directory, optionally throttled or hostile."""

    def __init__(
        self, root: Path, *, behaviour: Behaviour | None = None, rate: int | None = None, chunk: int = 16384
    ) -> None:
        self.root = root.resolve()
        self.behaviour = behaviour
        self.rate = rate  # bytes per second across all requests, None: unthrottled
        self.chunk = chunk
        self.served: Counter[str] = Counter()
        self.requests: list[str] = []
        self._next_slot = 0.0

    def routes(self) -> list[web.RouteDef]:
        """The route serving every file under the root."""
        return [web.get("/{path:.*}", self.handle)]

    def app(self) -> web.Application:
        """An application serving only the archive layout."""
        app = web.Application()
        app.add_routes(self.routes())
        return app

    def serve(self) -> ServerThread:
        """Start serving in a background thread (use as a context manager)."""
        return ServerThread(self.app())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one file, or what the behaviour sends instead."""
        path = request.match_info["path"]
        self.requests.append(path)
        file = (self.root / path).resolve()
        if not file.is_relative_to(self.root) or not file.is_file():
            return web.Response(status=404)
        data = file.read_bytes()
        if self.behaviour is not None:
            response = await self.behaviour(self, request, path, data)
            if response is not None:
                return response
        return await self.send(request, path, data)

    async def send(self, request: web.Request, path: str, data: bytes) -> web.StreamResponse:
        """Send ``data`` with a Content-Length, in chunks, at the configured rate, counting bytes."""
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        try:
            for start in range(0, len(data), self.chunk):
                piece = data[start : start + self.chunk]
                await self.throttle(len(piece))
                await response.write(piece)
                self.served[path] += len(piece)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away (killed, or it gave up on us)
        return response

    async def throttle(self, size: int) -> None:
        """Wait for this chunk's slot under the global rate limit."""
        if self.rate is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next_slot)
        self._next_slot = slot + size / self.rate
        await asyncio.sleep(slot - now)


# --- hostile behaviours on .filez objects -----------------------------------------------------------


def _is_filez(path: str) -> bool:
    return path.startswith("objects/") and path.endswith(".filez")


async def corrupt(
    server: ArchiveServer, request: web.Request, path: str, data: bytes
) -> web.StreamResponse | None:
    """Flip one bit near the end of every content object."""
    if not _is_filez(path):
        return None
    damaged = bytearray(data)
    damaged[-2 if len(data) > 2 else -1] ^= 0x40
    return await server.send(request, path, bytes(damaged))


async def corrupt_commits(
    server: ArchiveServer, request: web.Request, path: str, data: bytes
) -> web.StreamResponse | None:
    """Flip one bit in every commit object."""
    if not (path.startswith("objects/") and path.endswith(".commit")):
        return None
    return await server.send(request, path, data[:-1] + bytes([data[-1] ^ 1]))


async def wrong_name(
    server: ArchiveServer, request: web.Request, path: str, data: bytes
) -> web.StreamResponse | None:
    """Serve another valid content object's bytes under this object's name."""
    if not _is_filez(path):
        return None
    others = sorted(p for p in (server.root / "objects").glob("*/*.filez") if not str(p).endswith(path[8:]))
    return await server.send(request, path, others[0].read_bytes())


async def truncate(
    server: ArchiveServer, request: web.Request, path: str, data: bytes
) -> web.StreamResponse | None:
    """Promise the whole object, send half, then drop the connection."""
    if not _is_filez(path):
        return None
    response = web.StreamResponse()
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    server.served[path] += len(data) // 2
    assert request.transport is not None
    request.transport.close()
    return response


async def endless(
    server: ArchiveServer, request: web.Request, path: str, data: bytes
) -> web.StreamResponse | None:
    """Start with the honest bytes, then never stop sending."""
    if not _is_filez(path):
        return None
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(data)
    junk = os.urandom(65536)
    try:
        while True:
            await response.write(junk)
            server.served[path] += len(junk)
    except (ConnectionError, RuntimeError):
        pass
    return response


async def slow_drip(
    server: ArchiveServer, request: web.Request, path: str, data: bytes
) -> web.StreamResponse | None:
    """Send a few bytes every tenth of a second: never silent long enough to trip a read timeout."""
    if not _is_filez(path):
        return None
    response = web.StreamResponse()
    response.content_length = len(data)
    await response.prepare(request)
    try:
        for start in range(0, len(data), 8):
            await response.write(data[start : start + 8])
            server.served[path] += 8
            await asyncio.sleep(0.1)
    except (ConnectionError, RuntimeError):
        pass
    return response


def busy_once() -> Behaviour:
    """Answer each content object's first request with 503 Retry-After: 0 (a busy, honest server)."""
    seen: set[str] = set()

    async def behaviour(
        server: ArchiveServer, request: web.Request, path: str, data: bytes
    ) -> web.StreamResponse | None:
        if not _is_filez(path) or path in seen:
            return None
        seen.add(path)
        return web.Response(status=503, headers={"Retry-After": "0"})

    return behaviour


# --- a fake lanshare peer ---------------------------------------------------------------------------


class FakePeer:
    """A lanshare peer built on :mod:`lanshare.wire`: info, batch fetch and the archive layout."""

    def __init__(
        self,
        repo: Repo,
        *,
        node_id: str = "fake-peer",
        extra_record: bool = False,
        corrupt_records: bool = False,
        too_large: frozenset[str] = frozenset(),
        archive_behaviour: Behaviour | None = None,
        trees: str | None = None,
    ) -> None:
        self.repo = repo
        # None: no trees feature; "honest"; "extra": slips in an object outside the tree;
        # "forged": a subdirectory's dirtree whose bytes do not hash to its name.
        self.trees = trees
        self.trees_requests = 0
        self.node_id = node_id
        self.extra_record = extra_record
        self.corrupt_records = corrupt_records
        self.too_large = too_large  # object names answered TOO_LARGE
        self.archive = ArchiveServer(repo.path, behaviour=archive_behaviour)
        self.batches: list[int] = []  # objects requested per batch
        self.records_sent = 0

    def app(self) -> web.Application:
        """The peer's application."""
        app = web.Application()
        app.add_routes(
            [
                web.get(wire.API_PREFIX + "/info", self.info),
                web.post(wire.API_PREFIX + "/objects", self.objects),
                web.post(wire.TREES_PATH, self.tree_closure),
                *self.archive.routes(),
            ]
        )
        return app

    def serve(self) -> ServerThread:
        """Start serving in a background thread (use as a context manager)."""
        return ServerThread(self.app())

    async def info(self, request: web.Request) -> web.Response:
        """What this peer holds (with the trees feature: every ref's commit, complete)."""
        refs = self.repo.list_refs()
        info: dict[str, object] = {
            "version": wire.VERSION,
            "node_id": self.node_id,
            "collection_id": self.repo.collection_id,
            "refs": refs,
        }
        if self.trees is not None:
            info["features"] = [wire.TREES_FEATURE]
            info["commits"] = {c: {"complete": True} for c in refs.values()}
        return web.json_response(info)

    async def tree_closure(self, request: web.Request) -> web.StreamResponse:
        """The commit's dirtrees and dirmetas, parents first, honest or not as ``trees`` says."""
        commit, _ = wire.parse_trees_request(await request.json())
        self.trees_requests += 1
        root = self.repo.load_commit(commit)
        records, pending = [], [(root.root_tree, root.root_meta)]
        while pending:
            tree, meta = pending.pop(0)
            records.append(
                (wire.ObjectName(meta, ObjectType.DIR_META), self._bytes(meta, ObjectType.DIR_META))
            )
            data = self._bytes(tree, ObjectType.DIR_TREE)
            if self.trees == "forged" and tree != root.root_tree:
                data = data[:-1] + bytes([data[-1] ^ 1])
            records.append((wire.ObjectName(tree, ObjectType.DIR_TREE), data))
            pending += [(t, m) for _, t, m in self.repo.load_dirtree(tree).dirs]
            if self.trees == "extra" and tree == root.root_tree:
                checksum, kind, path = next(o for o in self.repo.iter_objects() if o[1] is ObjectType.FILE)
                records.append((wire.ObjectName(checksum, kind), path.read_bytes()))
        response = web.StreamResponse(headers={"Content-Type": wire.BATCH_CONTENT_TYPE})
        await response.prepare(request)
        compressor = wire.compressor().compressobj()
        body = wire.MAGIC + b"".join(wire.encode_record(n, d) for n, d in records) + bytes([wire.END])
        await response.write(compressor.compress(body) + compressor.flush())
        await response.write_eof()
        return response

    def _bytes(self, checksum: str, kind: ObjectType) -> bytes:
        return self.repo.object_path(checksum, kind).read_bytes()

    async def objects(self, request: web.Request) -> web.StreamResponse:
        """Answer a batch request with one record per object (plus hostile extras when asked)."""
        try:
            names = wire.parse_request(await request.json())
        except wire.WireError as e:
            return web.Response(status=400, text=str(e))
        self.batches.append(len(names))
        response = web.StreamResponse(headers={"Content-Type": wire.BATCH_CONTENT_TYPE})
        await response.prepare(request)
        compressor = wire.compressor().compressobj()
        await response.write(compressor.compress(wire.MAGIC))
        for i, name in enumerate(names):
            await response.write(compressor.compress(self._record(name)))
            self.records_sent += 1
            if self.extra_record and i == 0:
                extra = next(self.repo.iter_objects())
                extra_name = wire.ObjectName(extra[0], extra[1])
                await response.write(
                    compressor.compress(wire.encode_record(extra_name, extra[2].read_bytes()))
                )
        await response.write(compressor.compress(bytes([wire.END])) + compressor.flush())
        await response.write_eof()
        return response

    def _record(self, name: wire.ObjectName) -> bytes:
        if str(name) in self.too_large:
            return wire.encode_record(name, None, wire.TOO_LARGE)
        path = self.repo.object_path(name.checksum, name.kind)
        if not path.exists():
            return wire.encode_record(name, None, wire.ABSENT)
        data = path.read_bytes()
        if self.corrupt_records and name.kind.value == "filez":
            data = data[:-2] + bytes([data[-2] ^ 0x40]) + data[-1:]
        return wire.encode_record(name, data)
