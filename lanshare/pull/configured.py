"""A pull as this machine's configuration says, and what follows it.

The same whether ``lanshare pull`` runs it in its own process or hands it to the running daemon
(:mod:`lanshare.control`): trust, parallelism and the fleet place from the config; after a pull
that moved something, the summary is regenerated and the commit is recorded in the index.
"""

from __future__ import annotations

from sqlalchemy import Engine

from lanshare.config import Config
from lanshare.ostree.repo import Repo
from lanshare.ostree.repo_summary import refresh_summary
from lanshare.pull.engine import PullOptions, PullResult
from lanshare.pull.fleet import fleet_options
from lanshare.pull.verify import TrustPolicy


def pull_options(config: Config, node_id: str | None = None) -> PullOptions:
    """The pull options ``config`` gives; ``node_id`` is the daemon's (else read from the state dir)."""
    return PullOptions(
        trust=TrustPolicy.from_config(config.trust),
        parallel=config.pull.parallel,
        fleet=fleet_options(config, node_id),
    )


def record_pull(repo: Repo, index: Engine | None, result: PullResult, *, regenerate_summary: bool) -> None:
    """After a pull: the summary lists the moved ref, the index knows the commit (blocking)."""
    if result.up_to_date:
        return
    refresh_summary(repo, regenerate=regenerate_summary)
    if index is not None:
        from lanshare.index import sync

        sync.record_commits(index, repo, [result.commit], result.ref)
