"""The lanshare daemon: one aiohttp application holding every long-lived resource, and ``run``.

Each resource is a ``cleanup_ctx`` entry stored under a typed :class:`web.AppKey`; they start in
order and stop in reverse, and only those that started are stopped.  The LAN listener is itself
such a resource: its own application and runner on ``[sharing] listen``.  On SIGTERM systemd hears
STOPPING first, background work is cancelled, the mDNS adverts say goodbye, then the listeners
let in-flight responses finish while the repository and index are still open.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import signal
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path

from aiohttp import web

from lanshare import sdnotify
from lanshare.appkeys import (
    BACKGROUND,
    CONFIG,
    INDEX,
    LAN_ADDRESS,
    LAN_APP,
    NEW_NODE_ID,
    NODE_ID,
    REPO,
    SHARING,
    DaemonError,
)
from lanshare.background import Background
from lanshare.config import Config, ListenAddress
from lanshare.control.server import control_socket_ctx
from lanshare.discovery.advertise import advertise_ctx
from lanshare.discovery.browse import discovery_ctx
from lanshare.errors import Error
from lanshare.index import sync
from lanshare.index.db import open_index
from lanshare.ostree.repo import Repo
from lanshare.ostree.repo_summary import refresh_summary
from lanshare.power import SharingSwitch
from lanshare.ref_watch import ref_watch_ctx
from lanshare.server import HOLDINGS, LEDGER, LanLimits, create_lan_app
from lanshare.status.app import status_listener_ctx

log = logging.getLogger(__name__)

# The keys and DaemonError live in lanshare.appkeys; re-exported for the daemon's users.
__all__ = [
    "BACKGROUND",
    "CONFIG",
    "INDEX",
    "LAN_ADDRESS",
    "LAN_ADDRESS_FILE",
    "LAN_APP",
    "NEW_NODE_ID",
    "NODE_ID",
    "NODE_ID_FILE",
    "REPO",
    "SHARING",
    "DaemonError",
    "create_app",
    "load_node_id",
    "run",
]

NODE_ID_FILE = "node-id"
# Where the bound LAN address ("host:port") is written once listening: with port 0 it is the
# only way for another process to learn the port.
LAN_ADDRESS_FILE = "lan-address"
_NODE_ID_RE = re.compile(r"[0-9a-f]{32}")


def _write_file(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write ``text`` to ``path`` atomically; with ``exclusive``, only if ``path`` does not exist yet."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    try:
        if exclusive:
            os.link(tmp, path)  # fails if another process created it first
        else:
            os.replace(tmp, path)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def load_node_id(state_dir: Path) -> str:
    """This machine's node id: generated once (random), then read from ``<state_dir>/node-id``."""
    path = state_dir / NODE_ID_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = None
        if text is not None and _NODE_ID_RE.fullmatch(text):
            return text
        node_id = secrets.token_hex(16)
        if text is None:
            try:
                _write_file(path, node_id + "\n", exclusive=True)
            except FileExistsError:
                return load_node_id(state_dir)
        else:
            log.warning("%s does not hold a node id; replacing it with a new one", path)
            _write_file(path, node_id + "\n")
    except OSError as e:
        raise DaemonError(f"cannot keep the node id in {path}: {e.strerror or e}") from e
    return node_id


def renew_node_id(state_dir: Path, old: str) -> str:
    """Replace node id ``old`` with a new random one (unless the file already moved on); the new id."""
    path = state_dir / NODE_ID_FILE
    try:
        if path.read_text().strip() == old:
            _write_file(path, secrets.token_hex(16) + "\n")
    except OSError as e:
        raise DaemonError(f"cannot replace the node id in {path}: {e.strerror or e}") from e
    return load_node_id(state_dir)


async def _node_id(app: web.Application) -> AsyncIterator[None]:
    app[NODE_ID] = await asyncio.to_thread(load_node_id, app[CONFIG].state_dir)
    log.info("node id %s", app[NODE_ID])
    yield


async def _repo(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG].repo

    def open_repo() -> Repo:
        repo = Repo.init(config.path, config.collection_id)
        try:
            if refresh_summary(repo, regenerate=config.regenerate_summary):
                log.info("summary regenerated: refs changed since it was written")
        except Error as e:
            # Serving objects does not need a summary; a stock `ostree pull` of a named ref may.
            log.error("cannot regenerate the summary of %s: %s", config.path, e)
        return repo

    app[REPO] = await asyncio.to_thread(open_repo)
    yield


async def _index(app: web.Application) -> AsyncIterator[None]:
    # Migrating and backing up block: off the event loop.
    engine = await asyncio.to_thread(open_index, app[CONFIG].database.url)
    app[INDEX] = engine
    # A pull killed with its daemon (or a CLI pull killed) left its transfer "running" for ever.
    stale = await asyncio.to_thread(
        sync.interrupt_running_transfers, engine, "interrupted: the process stopped during the pull"
    )
    if stale:
        log.info("%d transfers left running by a stopped process marked failed", stale)
    # Their leases would keep what they were pulling from retention until they expire.
    if dead := await asyncio.to_thread(sync.drop_dead_leases, engine):
        log.info("%d leases of pulls whose process is gone dropped", dead)
    try:
        yield
    finally:
        await asyncio.to_thread(engine.dispose)


async def _lan_listener(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    listen = config.sharing.listen
    limits = LanLimits.from_config(config.sharing)
    # While sharing is paused (battery, metered) every request is answered 503, before anything else.
    lan_app = create_lan_app(app[REPO], limits, app[NODE_ID], sharing=app[SHARING])
    # The info document announces the commits this machine's pulls are fetching (lanshare.pull.fleet).
    lan_app[HOLDINGS].engine = app[INDEX]
    await app[SHARING].check()  # on battery from the first request, not 30 s later
    runner = web.AppRunner(lan_app, **limits.runner_kwargs())
    await runner.setup()
    address_file = config.state_dir / LAN_ADDRESS_FILE
    try:
        try:
            await web.TCPSite(runner, listen.host, listen.port).start()
        except OSError as e:
            raise DaemonError(f"cannot listen on {listen} ([sharing] listen): {e.strerror or e}") from e
        host, port = runner.addresses[0][:2]
        app[LAN_APP] = lan_app
        app[LAN_ADDRESS] = bound = ListenAddress(host, port)
        await asyncio.to_thread(_write_file, address_file, f"{bound}\n")
        log.info("LAN listener on http://%s/ (archive at / and /0/, API at /lanshare/v1/)", bound)
        yield
    finally:
        with suppress(FileNotFoundError):
            address_file.unlink()
        # Stops accepting, then waits up to limits.shutdown_timeout for in-flight responses.
        await runner.cleanup()


async def _background(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    watcher = asyncio.create_task(app[SHARING].watch(), name="power and network watch")
    try:
        served = app[LAN_APP][LEDGER].snapshot
        async with Background(config, app[REPO], app[INDEX], app[NODE_ID], served) as background:
            app[BACKGROUND] = background
            yield
    finally:
        watcher.cancel()
        with suppress(asyncio.CancelledError):
            await watcher


async def _service_manager(app: web.Application) -> AsyncIterator[None]:
    # Last entry: everything above is up when READY=1 goes out, and STOPPING=1 is the first
    # thing shutdown does.  Outside systemd (no $NOTIFY_SOCKET) this does nothing.
    lan = app[LAN_ADDRESS]
    sdnotify.notify(f"READY=1\nSTATUS=serving on {lan} as node {app[NODE_ID]}")
    watchdog: asyncio.Task[None] | None = None
    if (interval := sdnotify.watchdog_interval()) is not None:
        watchdog = asyncio.create_task(_watchdog(interval), name="systemd watchdog")
    try:
        yield
    finally:
        if app[NEW_NODE_ID].is_set():
            # systemd's reload protocol: RELOADING now, READY once the daemon is up again.
            sdnotify.notify("RELOADING=1\nSTATUS=restarting with a new node id")
        else:
            sdnotify.notify("STOPPING=1\nSTATUS=stopping")
        if watchdog is not None:
            watchdog.cancel()
            with suppress(asyncio.CancelledError):
                await watchdog


async def _watchdog(interval: float) -> None:
    # Pinged from the event loop itself: a loop stuck on a blocking call misses the deadline and
    # systemd restarts the daemon.
    while True:
        sdnotify.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def create_app(config: Config, new_node_id: asyncio.Event | None = None) -> web.Application:
    """The daemon application, its resources in start order (they stop in reverse)."""
    app = web.Application()
    app[CONFIG] = config
    app[NEW_NODE_ID] = new_node_id or asyncio.Event()
    app[SHARING] = SharingSwitch(config.sharing)
    app.cleanup_ctx.extend(
        [_node_id, _repo, _index, _lan_listener, advertise_ctx, discovery_ctx, status_listener_ctx]
    )
    # Then background work (origin poll, LAN convergence, retention), once peers can be found, and
    # the summary kept up with refs other processes change…
    app.cleanup_ctx.extend([_background, ref_watch_ctx])
    # …the socket ``lanshare pull`` hands its pulls to (they take the rounds' lock)…
    app.cleanup_ctx.append(control_socket_ctx)
    # …and, always last, telling systemd we are ready (and, first on shutdown, stopping).
    app.cleanup_ctx.append(_service_manager)
    return app


async def run(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run the daemon until SIGTERM/SIGINT (or ``stop`` is set), then shut down gracefully."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            renew = asyncio.Event()
            old = await _run_once(config, stop, renew)
            if stop.is_set() or not renew.is_set() or old is None:
                break
            new = await asyncio.to_thread(renew_node_id, config.state_dir, old)
            log.warning("node id %s replaced by %s; starting again", old, new)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _run_once(config: Config, stop: asyncio.Event, renew: asyncio.Event) -> str | None:
    """One life of the daemon application: until ``stop``, or ``renew`` (a new node id is needed).

    Returns the node id it ran with.
    """
    app = create_app(config, renew)
    runner = web.AppRunner(app, handle_signals=False)
    try:
        await runner.setup()
        waits = [asyncio.ensure_future(event.wait()) for event in (stop, renew)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if stop.is_set():
            log.info("stopping: in-flight responses get to finish")
    finally:
        await runner.cleanup()
    return app.get(NODE_ID)
