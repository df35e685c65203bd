"""``lanshare peers``: the peer table, as the daemon keeps it in the index (works while it runs)."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from lanshare.cli import EXIT_OK, print_json
from lanshare.context import Context
from lanshare.discovery.peers import PeerTable, health_label, peer_url
from lanshare.index.models import Peer, utcnow
from lanshare.units import format_size


def peer_json(peer: Peer, now: dt.datetime) -> dict[str, Any]:
    """One row of ``lanshare peers --json``."""
    return {
        "node_id": peer.node_id,
        "addresses": list(peer.addresses),
        "port": peer.port,
        "url": peer_url(peer.addresses[0], peer.port) if peer.addresses else None,
        "health": health_label(peer, now),
        "last_seen": peer.last_seen.isoformat(),
        "failures": peer.failures,
        "backoff_until": peer.backoff_until.isoformat() if peer.backoff_until else None,
        "bytes_in": peer.bytes_in,
        "bytes_out": peer.bytes_out,
        "rate": peer.last_rate,
        "collection_id": peer.collection_id,
        "holdings": dict(peer.holdings),
        "holdings_digest": peer.holdings_digest,
        "newest_checkpoint": peer.newest_checkpoint,
    }


def _ago(when: dt.datetime, now: dt.datetime) -> str:
    seconds = max(int((now - when).total_seconds()), 0)
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _print_table(rows: list[dict[str, Any]], now: dt.datetime) -> None:
    if not rows:
        print("no peers known (none discovered on the LAN yet, and no static [sharing] peers answered)")
        return
    header = ("NODE", "ADDRESSES", "HEALTH", "LAST SEEN", "FAILURES", "RECEIVED", "REFS")
    table = [header]
    for row in rows:
        addresses = ", ".join(row["addresses"]) + f" :{row['port']}"
        seen = _ago(dt.datetime.fromisoformat(row["last_seen"]), now)
        received = format_size(row["bytes_in"])
        table.append(
            (
                row["node_id"],
                addresses,
                row["health"],
                seen,
                str(row["failures"]),
                received,
                str(len(row["holdings"])),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def run_peers(args: argparse.Namespace) -> int:
    """List the peers the daemon knows, best known first."""
    ctx = Context.from_args(args)
    now = utcnow()
    rows = [peer_json(p, now) for p in PeerTable(ctx.index).peers()]
    if args.json:
        print_json({"peers": rows})
    else:
        _print_table(rows, now)
    return EXIT_OK
