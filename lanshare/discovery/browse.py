"""Discovery: browse ``_lanshare._tcp``, learn each peer's holdings, and keep the peer table current.

For every service the browser reports, the advert is resolved (addresses, port, TXT), the TXT is
decoded strictly (:mod:`lanshare.discovery.txt`), and the peer's ``/lanshare/v1/info`` is fetched
when the node is new to this daemon or its TXT holdings digest changed.  Adverts with garbage or
oversized TXT, our own advert, and addresses where nobody answers as that node are ignored, each
logged once (quietly after that); an unreachable advert is retried with a growing delay.  A goodbye
removes the peer; a crash is caught by the health checks of :mod:`lanshare.discovery.peers`.

:func:`discovery_ctx` is the daemon's ``cleanup_ctx`` entry running all of this.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from lanshare.discovery.advertise import LANSHARE_SERVICE, ZEROCONF
from lanshare.discovery.clones import CloneGuard
from lanshare.discovery.peers import HealthMonitor, PeerTable
from lanshare.discovery.quiet_log import QuietLog
from lanshare.discovery.txt import TxtError, decode_lanshare_txt

log = logging.getLogger(__name__)
_quiet = QuietLog(log)

# Milliseconds a resolution may take (a live peer answers in about 1 ms).
RESOLVE_TIMEOUT_MS = 3000
# An advert whose addresses do not answer is tried again after this, doubling up to the maximum.
RETRY_DELAY, MAX_RETRY_DELAY = 5.0, 300.0
# At most this many adverts are resolved at once; the others wait their turn in arrival order.
# A flood of forged names costs a queue entry each, never a task, and cannot crowd out an honest
# advert for good (refusing names beyond a cap let forged ones take every place, for ever).
MAX_RESOLVING = 512
# Names waiting beyond this are dropped (with a warning): the bound on a flood's memory.
MAX_WAITING = 8192


def usable_addresses(info: AsyncServiceInfo) -> list[str]:
    """The advert's addresses we can build a URL for: IPv4, routable IPv6, then link-local IPv6."""
    v4: list[str] = []
    v6: list[str] = []
    link_local: list[str] = []
    for address in info.ip_addresses_by_version(IPVersion.All):
        if address.is_multicast or address.is_unspecified:
            continue
        if isinstance(address, ipaddress.IPv6Address):
            if not address.is_link_local:
                v6.append(str(address))
            elif address.scope_id:
                # "fe80::1%2": reachable through the interface the advert was heard on.
                link_local.append(str(address))
        else:
            v4.append(str(address))
    return v4 + v6 + link_local


class PeerBrowser:
    """Feeds the peer table from ``_lanshare._tcp`` adverts."""

    def __init__(
        self,
        zeroconf: AsyncZeroconf,
        table: PeerTable,
        monitor: HealthMonitor,
        own_node_id: str,
        session: aiohttp.ClientSession,
    ) -> None:
        self.aiozc = zeroconf
        self.table = table
        self.monitor = monitor
        self.own_node_id = own_node_id
        self.session = session
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._busy: dict[str, bool] = {}  # service name -> resolve again when done
        self._nodes: dict[str, str] = {}  # service name -> node id
        self._digests: dict[str, str] = {}  # node id -> holdings digest last fetched
        self._retry: dict[str, float] = {}  # service name -> current retry delay
        self._retry_waiting: set[str] = set()  # names with a retry already scheduled
        self._queued: dict[str, None] = {}  # names waiting for a resolve slot, oldest first
        # Called with the name, addresses and port of each advert of our node id (cloned machines).
        self.on_own_id: Callable[[str, Sequence[str], int | None], Awaitable[None]] | None = None

    async def start(self) -> None:
        """Start browsing (the browser calls back on the event loop)."""
        self._browser = AsyncServiceBrowser(
            self.aiozc.zeroconf, [LANSHARE_SERVICE], handlers=[self._on_change]
        )

    async def close(self) -> None:
        """Stop browsing and every resolution in flight."""
        if self._browser is not None:
            await self._browser.async_cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            self._queued.pop(name, None)
            self._spawn(self._removed(name))
        elif name in self._busy:
            self._busy[name] = True  # changed while being resolved: once more when done
        elif len(self._busy) < MAX_RESOLVING:
            self._queued.pop(name, None)
            self._start_resolving(name)
        elif name in self._queued or len(self._queued) < MAX_WAITING:
            self._queued[name] = None
        else:
            _quiet.warning(
                "too many",
                "more than %d adverts of %s waiting: ignoring %r",
                MAX_WAITING,
                LANSHARE_SERVICE,
                name,
            )

    def _start_resolving(self, name: str) -> None:
        self._busy[name] = False
        self._spawn(self._resolve_loop(name))

    async def _removed(self, name: str) -> None:
        node_id = self._nodes.pop(name, None)
        self._retry.pop(name, None)
        if node_id is not None and node_id not in self._nodes.values():
            self._digests.pop(node_id, None)
            await asyncio.to_thread(self.table.forget, node_id)
            self.monitor.forget(node_id)
            log.info("peer %s left the LAN", node_id)

    async def _resolve_loop(self, name: str) -> None:
        try:
            while True:
                await self._resolve(name)
                if not self._busy.get(name):
                    break
                self._busy[name] = False
        except Exception as e:
            # Whatever a strange advert makes go wrong, the browser goes on with the others.
            _quiet.warning(f"error {name}", "advert %r could not be handled: %r", name, e)
        finally:
            self._busy.pop(name, None)
            while self._queued and len(self._busy) < MAX_RESOLVING:
                waiting = next(iter(self._queued))
                del self._queued[waiting]
                self._start_resolving(waiting)

    async def _resolve(self, name: str) -> None:
        """Resolve one advert and record the peer, or schedule another try if it does not answer."""
        info = AsyncServiceInfo(LANSHARE_SERVICE, name)
        if not await info.async_request(self.aiozc.zeroconf, RESOLVE_TIMEOUT_MS):
            _quiet.warning(f"resolve {name}", "advert %r did not resolve; ignored", name)
            return
        try:
            txt = decode_lanshare_txt(info.text or b"")
        except TxtError as e:
            _quiet.warning(f"txt {name}", "advert %r has a bad TXT record (%s); ignored", name, e)
            return
        if txt.node_id == self.own_node_id:
            if self.on_own_id is not None:
                await self.on_own_id(name, usable_addresses(info), info.port)
            return
        addresses = usable_addresses(info)
        port = info.port
        if not addresses or port is None:
            _quiet.warning(f"addr {name}", "advert %r has no usable address; ignored", name)
            return
        known = self._digests.get(txt.node_id)
        unchanged = known is not None and txt.holdings_match(known) and self._nodes.get(name) == txt.node_id
        # Holdings unchanged: no need to fetch the info document again.
        if unchanged and await asyncio.to_thread(self.table.seen, txt.node_id, addresses, port):
            return
        sighting = await self.monitor.reach(self.session, txt.node_id, addresses, port)
        if sighting is None:
            delay = min(self._retry.get(name, RETRY_DELAY / 2) * 2, MAX_RETRY_DELAY)
            self._retry[name] = delay
            _quiet.warning(
                f"reach {name}", "peer %s (%r) does not answer at %s; retrying in %.0f s",
                txt.node_id, name, ", ".join(addresses), delay,
            )  # fmt: skip
            if name not in self._retry_waiting:
                self._retry_waiting.add(name)
                self._spawn(self._retry_later(name, delay))
            return
        self._retry.pop(name, None)
        new = txt.node_id not in self._digests
        self._nodes[name] = txt.node_id
        self._digests[txt.node_id] = sighting.holdings_digest or ""
        await asyncio.to_thread(self.table.record, sighting)
        if new:
            log.info(
                "found peer %s at %s (%d refs)", txt.node_id, ", ".join(addresses), len(sighting.holdings)
            )

    async def _retry_later(self, name: str, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            self._retry_waiting.discard(name)
        if name in self._retry and name not in self._busy:
            self._on_change(self.aiozc.zeroconf, LANSHARE_SERVICE, name, ServiceStateChange.Updated)

    async def resolve_node(self, node_id: str) -> Sequence[str]:
        """Ask mDNS again where ``node_id`` is (the health monitor's re-resolution)."""
        for name, node in list(self._nodes.items()):
            if node != node_id:
                continue
            info = AsyncServiceInfo(LANSHARE_SERVICE, name)
            if await info.async_request(self.aiozc.zeroconf, RESOLVE_TIMEOUT_MS // 3):
                return usable_addresses(info)
        return ()


async def discovery_ctx(app: web.Application) -> AsyncIterator[None]:
    """The daemon's discovery: browse mDNS (unless switched off) and health-check every peer."""
    from lanshare.appkeys import CONFIG, INDEX, NODE_ID

    config = app[CONFIG].sharing
    if not config.discovery and not config.peers:
        yield
        return
    table = PeerTable(app[INDEX])
    monitor = HealthMonitor(table, app[NODE_ID], config.peers)
    session = aiohttp.ClientSession()
    browser: PeerBrowser | None = None
    try:
        if config.discovery:
            # advertise_ctx starts the daemon's one AsyncZeroconf whenever discovery is on.
            browser = PeerBrowser(app[ZEROCONF], table, monitor, app[NODE_ID], session)
            browser.on_own_id = CloneGuard.for_app(app).check
            monitor.resolver = browser.resolve_node
            await browser.start()
        checks = asyncio.get_running_loop().create_task(monitor.run(session))
        try:
            yield
        finally:
            checks.cancel()
            await asyncio.gather(checks, return_exceptions=True)
    finally:
        if browser is not None:
            await browser.close()
        await session.close()
