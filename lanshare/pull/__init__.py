"""Pull commits from lanshare peers and OSTree archive remotes, verifying everything (DESIGN §6)."""

from lanshare.progress import ProgressUpdate
from lanshare.pull.engine import PullOptions, PullResult, SourceStats, pull
from lanshare.pull.errors import CommitRejected, PullError
from lanshare.pull.http import Timeouts
from lanshare.pull.sources import PeerProvider, PlanEntry, SourceSpec, StaticPeers
from lanshare.pull.verify import TrustPolicy

__all__ = [
    "CommitRejected",
    "PeerProvider",
    "PlanEntry",
    "ProgressUpdate",
    "PullError",
    "PullOptions",
    "PullResult",
    "SourceSpec",
    "SourceStats",
    "StaticPeers",
    "Timeouts",
    "TrustPolicy",
    "pull",
]
