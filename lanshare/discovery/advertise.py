"""Advertising the LAN listener over mDNS, and the daemon's one AsyncZeroconf.

Two adverts for the same HTTP listener (DESIGN §5): ``_lanshare._tcp`` for lanshare peers and
``_ostree_repo._tcp`` for stock libostree/Flatpak LAN finders (TXT formats in
:mod:`lanshare.discovery.txt`).  :class:`Advertiser` registers both, re-announces when the
holdings or the summary change (a cheap check every couple of seconds: the holdings cache only
recomputes when a ref moved), and on stop unregisters both and waits for the goodbye packets,
so peers drop us at once instead of keeping a stale entry for the ≥1125 s zeroconf keeps one.

:func:`advertise_ctx` is the daemon's ``cleanup_ctx`` entry: it binds one AsyncZeroconf to the
configured ``[sharing] interfaces`` (IPv4; every interface when the list is empty), stores it
under :data:`ZEROCONF` for discovery to share, and advertises when ``[sharing] advertise`` is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import ifaddr
from aiohttp import web
from zeroconf import InterfaceChoice, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from lanshare.discovery.bloom import bloom_parameters, build_bloom
from lanshare.discovery.mdns_guard import HostMdnsForbidden, check_mdns_binding
from lanshare.discovery.txt import (
    MAX_OSTREE_BLOOM_BYTES,
    LanshareTxt,
    OstreeRepoTxt,
    TxtError,
    encode_lanshare_txt,
    encode_ostree_txt,
    lanshare_txt_from_info,
)
from lanshare.errors import Error
from lanshare.ostree.repo import Repo
from lanshare.ostree.summary import parse_summary
from lanshare.server.holdings import Holdings

__all__ = [
    "ADVERTISER",
    "LANSHARE_SERVICE",
    "OSTREE_SERVICE",
    "ZEROCONF",
    "AdvertError",
    "Advertiser",
    "advertise_ctx",
    "ostree_txt_for_summary",
    "resolve_interfaces",
]

log = logging.getLogger(__name__)

LANSHARE_SERVICE = "_lanshare._tcp.local."
OSTREE_SERVICE = "_ostree_repo._tcp.local."
# The archive is also served at /0/ (DESIGN §5), which is where ri=0 sends libostree.
OSTREE_REPO_INDEX = 0
# How often the holdings and summary are checked for a change worth re-announcing: a peer should
# see a new commit within 2 s.  Cheap: a stat of every ref file and of the summary.
REFRESH_INTERVAL = 0.5
# Interface addresses are looked at every this many refreshes (5 s).
ADDRESS_CHECK_TICKS = 10

ZEROCONF = web.AppKey("zeroconf", AsyncZeroconf)


class AdvertError(Error):
    """mDNS cannot be set up: an unknown interface, no IPv4 address, a socket that cannot bind."""


@dataclass(frozen=True)
class Binding:
    """Where mDNS runs: the addresses zeroconf binds to and the ones advertised in A/AAAA records."""

    bind: list[str] | InterfaceChoice
    advertised: list[str]
    ip_version: IPVersion = IPVersion.V4Only


def _by_interface(version: int) -> dict[str, list[str]]:
    """Each interface's addresses of one IP version (IPv6 without scope: records carry none)."""
    found: dict[str, list[str]] = {}
    for adapter in ifaddr.get_adapters():
        addresses = found.setdefault(adapter.nice_name, [])
        for ip in adapter.ips:
            if version == 4 and ip.is_IPv4 and isinstance(ip.ip, str):
                addresses.append(ip.ip)
            elif version == 6 and ip.is_IPv6 and isinstance(ip.ip, tuple):
                addresses.append(ip.ip[0])
    return found


def _is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def resolve_interfaces(interfaces: Sequence[str], listen_host: str) -> Binding:
    """The :class:`Binding` for ``[sharing] interfaces`` and the LAN listener's host (blocking).

    IPv6 is advertised when the listener takes it: ``[::]`` (which takes IPv4 too), an IPv6
    address, or a host name; link-local addresses included, which peers reach through the
    interface they heard the advert on.
    """
    try:
        listen = ipaddress.ip_address(listen_host)
    except ValueError:
        listen = None
    want_v4 = listen is None or listen.version == 4 or listen.is_unspecified
    want_v6 = listen is None or listen.version == 6
    v4, v6 = _by_interface(4), _by_interface(6)
    available = {name: (v4.get(name, []) if want_v4 else []) + (v6.get(name, []) if want_v6 else [])
                 for name in v4.keys() | v6.keys()}  # fmt: skip
    families = "IPv4 or IPv6" if want_v6 else "IPv4"
    if interfaces:
        unknown = [name for name in interfaces if name not in available]
        if unknown:
            raise AdvertError(
                f"[sharing] interfaces: no network interface named {', '.join(unknown)} "
                f"(this machine has {', '.join(sorted(available)) or 'none'})"
            )
        addresses = [a for name in interfaces for a in available[name]]
        if not addresses:
            raise AdvertError(f"[sharing] interfaces: {', '.join(interfaces)} have no {families} address")
        # zeroconf takes IPv4 addresses, and IPv6 ones it maps to their interfaces.
        bind: list[str] | InterfaceChoice = addresses
    else:
        addresses = sorted({a for found in available.values() for a in found})
        if not addresses:
            raise AdvertError(f"no network interface has an {families} address to advertise on")
        bind = InterfaceChoice.All
    has_v4 = any(ipaddress.ip_address(a).version == 4 for a in addresses)
    has_v6 = any(ipaddress.ip_address(a).version == 6 for a in addresses)
    ip_version = IPVersion.All if has_v4 and has_v6 else IPVersion.V6Only if has_v6 else IPVersion.V4Only
    if listen is not None and not listen.is_unspecified:
        # A listener bound to one address is reachable only there.
        advertised = [listen_host]
    else:
        # A peer that resolved 127.0.0.1 would only reach itself: loopback only when alone.
        advertised = [a for a in addresses if not _is_loopback(a)] or addresses
    return Binding(bind, advertised, ip_version)


def _summary_facts(repo: Repo) -> tuple[int, list[tuple[str, str]]]:
    """(timestamp, collection-refs) of the repo's summary, as libostree's finder will read them."""
    path = repo.path / "summary"
    try:
        data = path.read_bytes()
        mtime = int(os.stat(path).st_mtime)
    except FileNotFoundError:
        return 0, []
    try:
        summary = parse_summary(data)
    except Error as e:
        log.warning("cannot read %s for the _ostree_repo advert: %s", path, e)
        return mtime, []
    refs: list[tuple[str, str]] = []
    if summary.collection_id is not None:
        refs += [(summary.collection_id, r.name) for r in summary.refs]
    for collection_id, others in summary.collection_map.items():
        refs += [(collection_id, r.name) for r in others]
    timestamp = summary.last_modified if summary.last_modified is not None else mtime
    return timestamp, refs


def ostree_txt_for_summary(repo: Repo) -> OstreeRepoTxt:
    """The ``_ostree_repo._tcp`` TXT for the repo's summary (blocking: reads it)."""
    timestamp, refs = _summary_facts(repo)
    size, k = bloom_parameters(len(refs), MAX_OSTREE_BLOOM_BYTES)
    return OstreeRepoTxt(build_bloom(refs, size, k), k, timestamp, OSTREE_REPO_INDEX)


def _summary_stamp(repo: Repo) -> tuple[int, int, int] | None:
    try:
        st = os.stat(Path(repo.path) / "summary")
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class Advertiser:
    """Both adverts of one LAN listener; :meth:`start`, then :meth:`stop` (sends goodbyes)."""

    def __init__(
        self,
        aiozc: AsyncZeroconf,
        holdings: Holdings,
        repo: Repo,
        node_id: str,
        port: int,
        addresses: Sequence[str],
        *,
        refresh_interval: float = REFRESH_INTERVAL,
        resolve: Callable[[], Binding] | None = None,
    ) -> None:
        self.aiozc = aiozc
        self.holdings = holdings
        self.repo = repo
        self.node_id = node_id
        self.port = port
        self.addresses = list(addresses)
        self.refresh_interval = refresh_interval
        # Where to look up the addresses again (the machine may move to another network).
        self.resolve = resolve
        self.lanshare_txt: LanshareTxt | None = None
        self.ostree_txt: OstreeRepoTxt | None = None
        self._infos: dict[str, AsyncServiceInfo] = {}
        self._summary_stamp: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._problem: str | None = None
        self._registered_name: str | None = None
        # The same instance name under both types, unique on the LAN because the node id is.
        self.instance = f"lanshare-{node_id}"
        self.server = f"lanshare-{node_id}.local."

    def _info(self, type_: str, text: bytes) -> AsyncServiceInfo:
        name = self._infos[type_].name if type_ in self._infos else f"{self.instance}.{type_}"
        return AsyncServiceInfo(
            type_, name, port=self.port, properties=text, server=self.server, parsed_addresses=self.addresses
        )

    async def _current(self) -> tuple[LanshareTxt, OstreeRepoTxt]:
        snapshot = await self.holdings.snapshot()
        stamp = await asyncio.to_thread(_summary_stamp, self.repo)
        if self.ostree_txt is None or stamp != self._summary_stamp:
            ostree_txt = await asyncio.to_thread(ostree_txt_for_summary, self.repo)
            self._summary_stamp = stamp
        else:
            ostree_txt = self.ostree_txt
        return lanshare_txt_from_info(snapshot.info), ostree_txt

    def registered_name(self) -> str | None:
        """The ``_lanshare._tcp`` service name last registered (probing may have renamed it)."""
        return self._registered_name

    async def start(self) -> None:
        """Register both adverts (probing takes about 1.2 s), then watch for changes."""
        await self._register()
        self._task = asyncio.create_task(self._watch(), name="lanshare-advertise-refresh")

    async def _register(self) -> None:
        async with self._lock:
            if self._infos:
                return
            lanshare_txt, ostree_txt = await self._current()
            infos = {
                LANSHARE_SERVICE: self._info(LANSHARE_SERVICE, encode_lanshare_txt(lanshare_txt)),
                OSTREE_SERVICE: self._info(OSTREE_SERVICE, encode_ostree_txt(ostree_txt)),
            }
            # Probing both names at once: one probe round instead of two.
            pending = await asyncio.gather(
                *(
                    self.aiozc.async_register_service(
                        info, allow_name_change=True, strict=type_ != OSTREE_SERVICE
                    )
                    for type_, info in infos.items()
                )
            )
            self._infos = infos
            self._registered_name = infos[LANSHARE_SERVICE].name
            self.lanshare_txt, self.ostree_txt = lanshare_txt, ostree_txt
            # Each register returns the task sending the announcements: done means they went out.
            await asyncio.gather(*pending)
        log.info(
            "advertising %s and %s on %s port %d",
            LANSHARE_SERVICE,
            OSTREE_SERVICE,
            ", ".join(self.addresses),
            self.port,
        )

    async def _unregister(self) -> None:
        async with self._lock:
            infos, self._infos = list(self._infos.values()), {}
            # Each unregister returns the task sending the goodbyes: closing before it is done
            # would cancel them, and peers would keep us listed.
            pending = [await self.aiozc.async_unregister_service(info) for info in infos]
            await asyncio.gather(*pending)
        if infos:
            log.info("mDNS adverts withdrawn")

    async def set_paused(self, paused: bool) -> None:
        """SharingSwitch listener: withdraw the adverts while sharing is paused, announce them after."""
        if paused:
            await self._unregister()
        elif self._task is not None:
            await self._register()

    async def refresh(self) -> bool:
        """Re-announce whichever advert's TXT changed; True if one did."""
        async with self._lock:
            if not self._infos:
                return False
            lanshare_txt, ostree_txt = await self._current()
            pending = []
            if lanshare_txt != self.lanshare_txt:
                info = self._info(LANSHARE_SERVICE, encode_lanshare_txt(lanshare_txt))
                pending.append(await self.aiozc.async_update_service(info))
                self._infos[LANSHARE_SERVICE], self.lanshare_txt = info, lanshare_txt
            if ostree_txt != self.ostree_txt:
                info = self._info(OSTREE_SERVICE, encode_ostree_txt(ostree_txt))
                pending.append(await self.aiozc.async_update_service(info))
                self._infos[OSTREE_SERVICE], self.ostree_txt = info, ostree_txt
            await asyncio.gather(*pending)
        if pending:
            log.info("re-announced: holdings %s", lanshare_txt.holdings)
        return bool(pending)

    async def check_addresses(self) -> bool:
        """Re-announce with the interfaces' current addresses if they changed; True if they did."""
        if self.resolve is None:
            return False
        binding = await asyncio.to_thread(self.resolve)
        if binding.advertised == self.addresses:
            return False
        check_mdns_binding(binding.bind)
        async with self._lock:
            old, self.addresses = self.addresses, binding.advertised
            if self._infos:
                assert self.lanshare_txt is not None and self.ostree_txt is not None
                infos = {
                    LANSHARE_SERVICE: self._info(LANSHARE_SERVICE, encode_lanshare_txt(self.lanshare_txt)),
                    OSTREE_SERVICE: self._info(OSTREE_SERVICE, encode_ostree_txt(self.ostree_txt)),
                }
                pending = [await self.aiozc.async_update_service(info) for info in infos.values()]
                self._infos = infos
                await asyncio.gather(*pending)
        # New sockets for new addresses (and the registrations announced on them), old ones dropped.
        await self.aiozc.async_update_interfaces(interfaces=binding.bind)
        log.info("mDNS addresses changed from %s to %s", ", ".join(old), ", ".join(self.addresses))
        return True

    async def _watch(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(self.refresh_interval)
            ticks += 1
            try:
                await self.refresh()
                if ticks % ADDRESS_CHECK_TICKS == 0:
                    await self.check_addresses()
                self._problem = None
            except (Error, OSError) as e:
                # Keep the old adverts and try again; say so once, not every half second.
                if str(e) != self._problem:
                    log.warning("cannot refresh the mDNS adverts: %s", e)
                self._problem = str(e)

    async def stop(self) -> None:
        """Stop watching, unregister both adverts and wait until the goodbyes are sent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._unregister()


ADVERTISER = web.AppKey("advertiser", Advertiser)


async def advertise_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx entry: the daemon's AsyncZeroconf (for advertise or discovery) and its adverts."""
    from lanshare import appkeys as daemon
    from lanshare.server import HOLDINGS

    config = app[daemon.CONFIG].sharing
    if not (config.advertise or config.discovery):
        yield
        return
    listen = app[daemon.LAN_ADDRESS]
    try:
        binding = await asyncio.to_thread(resolve_interfaces, config.interfaces, listen.host)
        check_mdns_binding(binding.bind)
        aiozc = AsyncZeroconf(interfaces=binding.bind, ip_version=binding.ip_version)
    except OSError as e:
        raise daemon.DaemonError(f"cannot start mDNS ([sharing] interfaces): {e.strerror or e}") from e
    except (AdvertError, HostMdnsForbidden) as e:
        raise daemon.DaemonError(str(e)) from e
    app[ZEROCONF] = aiozc
    advertiser: Advertiser | None = None
    try:
        if config.advertise:
            advertiser = Advertiser(
                aiozc,
                app[daemon.LAN_APP][HOLDINGS],
                app[daemon.REPO],
                app[daemon.NODE_ID],
                listen.port,
                binding.advertised,
                resolve=partial(resolve_interfaces, config.interfaces, listen.host),
            )
            app[ADVERTISER] = advertiser
            try:
                await advertiser.start()
            except TxtError as e:
                raise daemon.DaemonError(
                    f"cannot advertise on mDNS: {e} (or set [sharing] advertise = false)"
                ) from e
            app[daemon.SHARING].subscribe(advertiser.set_paused)
        yield
    finally:
        try:
            if advertiser is not None:
                await advertiser.stop()
        finally:
            await aiozc.async_close()
