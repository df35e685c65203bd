"""The LAN listener: the OSTree archive layout and lanshare's ``/lanshare/v1/`` API, read-only."""

from lanshare.server.holdings import Holdings, HoldingsSnapshot
from lanshare.server.lan import HOLDINGS, LEDGER, LIMITS, NODE_ID, REPO, create_lan_app
from lanshare.server.limits import LanLimits, PeerLedger, PeerStats

__all__ = [
    "HOLDINGS",
    "LEDGER",
    "LIMITS",
    "NODE_ID",
    "REPO",
    "Holdings",
    "HoldingsSnapshot",
    "LanLimits",
    "PeerLedger",
    "PeerStats",
    "create_lan_app",
]
