"""The sources of a pull, from the configuration: ``--from`` URLs, else ``[pull] order``.

It sits above both :mod:`lanshare.pull` and :mod:`lanshare.discovery`: discovery builds on the
pull's sources (a peer is probed like one), and the plan joins the peer table to the origin, so
data flows one way, discovery → plan → pull.
"""

from __future__ import annotations

from collections.abc import Sequence

from lanshare.config import Config
from lanshare.errors import UsageError
from lanshare.pull.sources import PeerProvider, PlanEntry, SourceSpec, StaticPeers, base_url


def plan_from_config(config: Config, from_urls: Sequence[str] = ()) -> list[PlanEntry]:
    """The sources of a pull: ``--from`` URLs if any, else ``[pull] order`` over peers and origin."""
    if from_urls:
        for url in from_urls:
            try:
                base_url(url)
            except ValueError as e:
                raise UsageError(f"--from: {e}") from None
        return [SourceSpec(url) for url in from_urls]
    plan: list[PlanEntry] = []
    for kind in config.pull.order:
        if kind == "lan":
            plan.append(lan_peers(config))
        elif config.origin.url is not None:
            plan.append(SourceSpec(config.origin.url, "archive", "origin"))
    return plan


def lan_peers(config: Config) -> PeerProvider:
    """The peer table (fed by mDNS and the daemon's health checks) with the static peers."""
    if not config.sharing.discovery:
        return StaticPeers(config.sharing.peers)
    from lanshare.discovery.peers import TablePeers  # the index and mDNS, only when discovering

    return TablePeers(config.database.url, config.sharing.peers, config.state_dir)
