"""The status listener: the HTML page, ``/api/v1/status`` and ``/metrics`` on ``[status] listen``.

Its own application and runner, started by the daemon's ``status_listener_ctx`` entry after the
LAN listener (so it can report the LAN address and served bytes).  Read-only, GET/HEAD only, and
meant for 127.0.0.1: a Host check refuses names other than an address literal, ``localhost`` or the
configured host, so a web page elsewhere cannot read it through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Coroutine
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from lanshare.config import ListenAddress
from lanshare.server.lan import LEDGER
from lanshare.server.limits import PeerStats
from lanshare.status.address import STATUS_ADDRESS_FILE as STATUS_ADDRESS_FILE  # re-exported
from lanshare.status.collector import StatusCollector, StatusSources
from lanshare.status.metrics import CONTENT_TYPE, render_metrics
from lanshare.status.page import render_page
from lanshare.status.recent import RecentErrors
from lanshare.status.svg import chain_svg

log = logging.getLogger(__name__)

COLLECTOR = web.AppKey("status_collector", StatusCollector)
_ALLOWED_HOSTS = web.AppKey("status_allowed_hosts", frozenset)
STATUS_APP = web.AppKey("status_app", web.Application)
STATUS_ADDRESS = web.AppKey("status_address", ListenAddress)
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:",
}


def _host_allowed(host_header: str | None, allowed: frozenset[str]) -> bool:
    if not host_header:
        return True  # HTTP/1.0 clients and curl --http1.0 send none; no browser does
    host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    host = host.strip("[]").lower()
    if host in allowed:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _host_allowed(request.headers.get("Host"), request.app[_ALLOWED_HOSTS]):
        return web.Response(status=421, text="unknown Host: use the address itself or localhost\n")
    response = await handler(request)
    response.headers.update(_HEADERS)
    return response


async def _page(request: web.Request) -> web.Response:
    collector = request.app[COLLECTOR]
    status = await collector.snapshot()
    # Rendering thousands of commits takes a while: off the event loop the LAN listener shares.
    html = await asyncio.get_running_loop().run_in_executor(collector.executor, render_page, status)
    return web.Response(text=html, content_type="text/html", charset="utf-8")


async def _api_status(request: web.Request) -> web.Response:
    collector = request.app[COLLECTOR]
    status = await collector.snapshot()
    # Compact: with thousands of commits the document runs to megabytes.
    dump = functools.partial(json.dumps, status, separators=(",", ":"), sort_keys=True)
    text = await asyncio.get_running_loop().run_in_executor(collector.executor, dump)
    return web.Response(
        text=text,
        content_type="application/json",
    )


async def _metrics(request: web.Request) -> web.Response:
    status = await request.app[COLLECTOR].snapshot()
    response = web.Response(body=render_metrics(status))
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def _chain_svg(request: web.Request) -> web.Response:
    status = await request.app[COLLECTOR].snapshot()
    svg = chain_svg(status["chain"], [r["name"] for r in status["refs"]], standalone=True)
    if not svg.startswith("<svg"):
        svg = '<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"></svg>'
    return web.Response(text=svg, content_type="image/svg+xml")


def create_status_app(collector: StatusCollector, listen_host: str) -> web.Application:
    """The status application over ``collector``'s snapshots."""
    app = web.Application(middlewares=[_guard])
    app[COLLECTOR] = collector
    app[_ALLOWED_HOSTS] = frozenset({"localhost", listen_host.lower()})
    app.router.add_get("/", _page)
    app.router.add_get("/api/v1/status", _api_status)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/chain.svg", _chain_svg)
    return app


T = TypeVar("T")


class _StatusLoop:
    """A thread running the status listener's own event loop.

    Under load the LAN listener keeps the daemon's event loop busy; on a loop of its own the status
    page still answers (50 pulling peers: p99 of GET / from 340 ms on the shared loop, see
    bench/bench_load.py).
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="lanshare-status", daemon=True)
        self._thread.start()

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the status loop and wait for it from the calling loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


async def _close(collector: StatusCollector) -> None:
    collector.close()


def _write_address(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def status_listener_ctx(app: web.Application) -> AsyncIterator[None]:
    """Daemon ``cleanup_ctx`` entry: serve the status application on ``[status] listen``."""
    from lanshare import appkeys as daemon

    config = app[daemon.CONFIG]
    listen = config.status.listen
    errors = RecentErrors()
    logging.getLogger().addHandler(errors)
    lan_app = app.get(daemon.LAN_APP)

    def served() -> dict[str, PeerStats]:
        # Read from the status thread while the LAN listener may add a peer: try again then.
        for _ in range(10):
            with suppress(RuntimeError):
                return lan_app[LEDGER].snapshot() if lan_app is not None else {}
        return {}

    def lan_address() -> str | None:
        address = app.get(daemon.LAN_ADDRESS)
        return str(address) if address is not None else None

    def status_address() -> str | None:
        address = app.get(STATUS_ADDRESS)
        return str(address) if address is not None else None

    sources = StatusSources(
        config,
        app[daemon.NODE_ID],
        app[daemon.REPO],
        app[daemon.INDEX],
        errors,
        lan_address=lan_address,
        status_address=status_address,
        served=served,
        flushed=lambda: background.flushed if (background := app.get(daemon.BACKGROUND)) else {},
    )
    collector = StatusCollector(sources)
    status_app = create_status_app(collector, listen.host)
    runner = web.AppRunner(status_app, access_log=None, shutdown_timeout=5)
    status_loop = _StatusLoop()
    try:
        await status_loop.run(runner.setup())
    except BaseException:
        status_loop.stop()
        logging.getLogger().removeHandler(errors)
        raise
    address_file = config.state_dir / STATUS_ADDRESS_FILE
    try:
        try:
            await status_loop.run(web.TCPSite(runner, listen.host, listen.port).start())
        except OSError as e:
            raise daemon.DaemonError(f"cannot listen on {listen} ([status] listen): {e.strerror or e}") from e
        host, port = runner.addresses[0][:2]
        app[STATUS_APP] = status_app
        app[STATUS_ADDRESS] = bound = ListenAddress(host, port)
        await asyncio.to_thread(_write_address, address_file, f"{bound}\n")
        log.info("status page on http://%s/ (JSON at /api/v1/status, metrics at /metrics)", bound)
        yield
    finally:
        with suppress(FileNotFoundError):
            address_file.unlink()
        await status_loop.run(runner.cleanup())
        await status_loop.run(_close(collector))
        status_loop.stop()
        logging.getLogger().removeHandler(errors)
