"""Prometheus text for ``/metrics``, built from one status snapshot in a registry of its own.

A fresh :class:`CollectorRegistry` per scrape (never the process-global one) holds a collector
that reads the snapshot, so the numbers are the same ones the status page shows.  Families
(documented in README "The status page"):

==================================== ======= ============================================
``lanshare_info``                    gauge   1, labels ``node_id``, ``version``
``lanshare_repo_bytes``              gauge   bytes of objects in the repository (*)
``lanshare_repo_max_bytes``          gauge   ``[retention] max_size``
``lanshare_repo_evictable_bytes``    gauge   bytes prune may evict (*)
``lanshare_retention_plan_seconds``  gauge   how long the last retention plan took (*)
``lanshare_commits``                 gauge   held commits of followed refs, by ``fate`` (*)
``lanshare_checkpoints``             gauge   checkpoint commits held
``lanshare_refs``                    gauge   followed refs, by ``held`` (true/false)
``lanshare_pins``                    gauge   admin pins
``lanshare_update_path_steps``       gauge   steps left on this machine's update path
``lanshare_peers``                   gauge   peers in the index, by ``health``
``lanshare_peer_received_bytes``     counter bytes pulled from each peer (``peer``)
``lanshare_peer_sent_bytes``         counter bytes served to each peer (``peer``)
``lanshare_transfers``               gauge   transfers listed, by ``state``
``lanshare_pulled_bytes``            counter bytes pulled, by ``source`` (peers/origin)
``lanshare_served_bytes``            counter bytes the LAN listener served since start
``lanshare_commit_pulled_bytes``     gauge   a recent commit's pulled bytes (``commit``, ``source``
                                            origin/peers, ``scope`` node/lan)
``lanshare_served_requests``         counter requests the LAN listener answered since start
``lanshare_log_messages``            counter warnings and errors logged since start, by ``level``
==================================== ======= ============================================

(*) from the last retention plan, computed in the background: absent until the first one is done.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SnapshotCollector(Collector):
    """Turns one status snapshot into metric families."""

    def __init__(self, status: dict[str, Any]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        """Yield every family (called by the registry while it renders the text)."""
        s = self.status
        info = GaugeMetricFamily("lanshare_info", "This daemon", labels=["node_id", "version"])
        info.add_metric([s["node_id"], s["version"]], 1)
        yield info
        disk = s["disk"]
        yield GaugeMetricFamily("lanshare_repo_max_bytes", "[retention] max_size in bytes", disk["max_bytes"])
        # Measured by the retention plan: absent until the first one is done, rather than a false 0.
        if disk["used_bytes"] is not None:
            yield GaugeMetricFamily(
                "lanshare_repo_bytes", "Bytes of objects in the repository", disk["used_bytes"]
            )
            yield GaugeMetricFamily(
                "lanshare_repo_evictable_bytes", "Bytes prune may evict", disk["evictable_bytes"]
            )
        commits = s["chain"]["commits"]
        if s["retention"]["computed_at"] is not None:
            yield GaugeMetricFamily(
                "lanshare_retention_plan_seconds",
                "How long the last retention plan took",
                s["retention"]["seconds"],
            )
            fates = GaugeMetricFamily("lanshare_commits", "Held commits of followed refs", labels=["fate"])
            for fate, count in (
                ("kept", sum(1 for c in commits if c["kept"] and not c["evictable"])),
                ("commit_only", sum(1 for c in commits if not c["kept"] and c["commit_only"])),
                ("evictable", sum(1 for c in commits if c["evictable"])),
            ):
                fates.add_metric([fate], count)
            yield fates
        yield GaugeMetricFamily(
            "lanshare_checkpoints",
            "Checkpoint commits held",
            sum(1 for c in commits if c["checkpoint"] or c["target"]),
        )
        refs = GaugeMetricFamily("lanshare_refs", "Followed refs", labels=["held"])
        refs.add_metric(["true"], sum(1 for r in s["refs"] if r["held"]))
        refs.add_metric(["false"], sum(1 for r in s["refs"] if not r["held"]))
        yield refs
        yield GaugeMetricFamily("lanshare_pins", "Admin pins", len(s["pins"]))
        path = s["deployed"]["path"]
        if path is not None:
            yield GaugeMetricFamily(
                "lanshare_update_path_steps", "Steps left on the update path", len(path["steps"])
            )
        yield from self._peers()
        transfers = GaugeMetricFamily("lanshare_transfers", "Transfers listed", labels=["state"])
        for state in ("running", "done", "failed"):
            transfers.add_metric([state], sum(1 for t in s["transfers"] if t["state"] == state))
        yield transfers
        pulled = CounterMetricFamily("lanshare_pulled_bytes", "Bytes pulled", labels=["source"])
        pulled.add_metric(["peers"], s["savings"]["from_peers_bytes"])
        pulled.add_metric(["origin"], s["savings"]["from_origin_bytes"])
        yield pulled
        yield from self._by_commit()
        yield CounterMetricFamily("lanshare_served_bytes", "Bytes served on the LAN", s["served"]["bytes"])
        yield CounterMetricFamily(
            "lanshare_served_requests", "Requests answered on the LAN", s["served"]["requests"]
        )
        logged = CounterMetricFamily("lanshare_log_messages", "Warnings and errors logged", labels=["level"])
        for level in ("WARNING", "ERROR", "CRITICAL"):
            logged.add_metric([level], s["errors"]["totals"].get(level, 0))
        yield logged

    def _by_commit(self) -> Iterator[Metric]:
        by_commit = GaugeMetricFamily(
            "lanshare_commit_pulled_bytes",
            "Bytes of a recent commit's pulls, by source, on this node or the LAN (as peers report)",
            labels=["commit", "source", "scope"],
        )
        for c in self.status["savings"]["by_commit"]:
            for source, node_key, lan_key in (
                ("origin", "origin_bytes", "lan_origin_bytes"),
                ("peers", "peer_bytes", "lan_peer_bytes"),
            ):
                by_commit.add_metric([c["commit"], source, "node"], c[node_key])
                by_commit.add_metric([c["commit"], source, "lan"], c[lan_key])
        yield by_commit

    def _peers(self) -> Iterator[Metric]:
        peers = self.status["peers"]
        health = GaugeMetricFamily("lanshare_peers", "Peers in the index", labels=["health"])
        for state in ("healthy", "failing", "backing off"):
            health.add_metric([state], sum(1 for p in peers if p["health"] == state))
        yield health
        received = CounterMetricFamily(
            "lanshare_peer_received_bytes", "Bytes pulled from a peer", labels=["peer"]
        )
        sent = CounterMetricFamily("lanshare_peer_sent_bytes", "Bytes served to a peer", labels=["peer"])
        for p in peers:
            received.add_metric([p["node_id"]], p["bytes_in"])
            sent.add_metric([p["node_id"]], p["bytes_out"])
        yield received
        yield sent


def render_metrics(status: dict[str, Any]) -> bytes:
    """The Prometheus text exposition of ``status``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(status))
    return generate_latest(registry)
