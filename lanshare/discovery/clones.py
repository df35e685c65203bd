"""Cloned machines: a peer advertising our own node id.

A node id copied into a disk image makes every machine made from it the same node: each one
takes the others' adverts for its own and ignores them, so they never share anything.  When an
advert carries our node id under another service name than ours, this machine says so once and
asks the daemon to start again with a new node id, which re-advertises under the new name
(:func:`lanshare.daemon.run`).  Both twins may do so; new ids are random, so they end up distinct
either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from aiohttp import web

log = logging.getLogger(__name__)


class CloneGuard:
    """Tells our own advert from a twin's, and asks for a new node id once a twin shows up."""

    def __init__(self, node_id: str, own_name: Callable[[], str | None], renew: asyncio.Event) -> None:
        self.node_id = node_id
        self.own_name = own_name
        self.renew = renew

    @classmethod
    def for_app(cls, app: web.Application) -> CloneGuard:
        """The guard of the daemon application ``app``."""
        from lanshare import appkeys
        from lanshare.discovery.advertise import ADVERTISER

        def own_name() -> str | None:
            advertiser = app.get(ADVERTISER)
            return advertiser.registered_name() if advertiser is not None else None

        return cls(app[appkeys.NODE_ID], own_name, app[appkeys.NEW_NODE_ID])

    def is_twin(self, name: str) -> bool:
        """Whether the advert ``name`` carrying our node id is another machine's.

        By name, not address: both twins answer for the same host name, so a resolver's cache
        mixes their addresses, while mDNS probing keeps service names unique on the LAN (the
        second twin to register got ``lanshare-ID (2)``).
        """
        return name != self.own_name()

    async def check(self, name: str, addresses: Sequence[str], port: int | None) -> None:
        """Called with each advert of our own node id: renew the id if a twin made it."""
        if self.renew.is_set() or not self.is_twin(name):
            return
        log.warning(
            "another machine advertises this machine's node id %s (%r at %s port %s): a cloned "
            "disk image? Making a new node id and advertising again",
            self.node_id,
            name,
            ", ".join(addresses) or "no address",
            port,
        )
        self.renew.set()
