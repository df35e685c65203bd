"""The parts of a status snapshot: what the status page, ``/api/v1/status`` and ``/metrics`` show.

A snapshot is a plain JSON-ready dictionary whose shape is documented in ``status-schema.json``
(next to this module) and checked by the tests; :mod:`lanshare.status.collector` assembles it from
these parts, each read at its own pace.  Every function here blocks (repository and index reads).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from lanshare.commands.prune import policy_for
from lanshare.config import Config, UpgradeConfig
from lanshare.context import Context
from lanshare.deploy.deployed import Deployed, parse_status
from lanshare.errors import CorruptObject, Error, MissingObject, UsageError
from lanshare.index import sync
from lanshare.index.models import Peer, Transfer, TransferState
from lanshare.ostree.commit_tree import CHECKPOINT_SOURCE_KEY
from lanshare.ostree.repo import Repo
from lanshare.retention import PIN_REF_PREFIX, plan_retention
from lanshare.server.limits import PeerStats
from lanshare.update_path import CommitInfo, PathError, RepoGraph, compute_path
from lanshare.upgrade import read_deployed as read_upgrade_deployed

SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("status-schema.json")
# Transfers shown: every running one, plus this many of the most recent finished ones.
RECENT_TRANSFERS = 20
_DEPLOYED_COMMAND_TIMEOUT = 10.0

Json = dict[str, Any]


class _DaemonContext(Context):
    """The command-line :class:`Context` over the daemon's already open repository and index."""

    def __init__(self, config: Config, repo: Repo, engine: Engine) -> None:
        super().__init__(config, repo.path)
        # cached_property values live in the instance dict: pre-fill them with what is open.
        self.__dict__["repo"] = repo
        self.__dict__["index"] = engine


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


def _ts(seconds: int | None) -> str | None:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat() if seconds is not None else None


# -- the deployed commit ---------------------------------------------------------------------------


def read_deployed(config: Config) -> Json:
    """What ``[upgrade]`` says is deployed, read as ``lanshare upgrade`` reads it:
    ``{"commit", "ref", "source", "error"}``."""
    upgrade = config.upgrade
    try:
        if upgrade.deployed_commit_command is not None:
            # Not upgrade.read_deployed: a hung `rpm-ostree status` must not hang the page.
            return _run_deployed_command(upgrade.deployed_commit_command)
        deployed = read_upgrade_deployed(upgrade)
    except UsageError:
        return _unknown(None, None)  # nothing configured
    except Error as e:
        return _unknown(_source(upgrade), str(e))
    return _known(deployed)


def _unknown(source: str | None, error: str | None) -> Json:
    return {"commit": None, "ref": None, "source": source, "error": error, "pending": None, "note": None}


def _known(deployed: Deployed) -> Json:
    # "pending": deployed, waiting for the next boot (the status page says "reboot needed").
    return {
        "commit": deployed.commit, "ref": deployed.ref, "source": deployed.source, "error": None,
        "pending": deployed.pending, "note": deployed.note,
    }  # fmt: skip


def _source(upgrade: UpgradeConfig) -> str | None:
    if upgrade.deployed_commit_file is not None:
        return f"file {upgrade.deployed_commit_file}"
    if upgrade.deployed_commit_command is not None:
        return "command " + " ".join(upgrade.deployed_commit_command)
    return None


def _run_deployed_command(argv: tuple[str, ...]) -> Json:
    source = "command " + " ".join(argv)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_DEPLOYED_COMMAND_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return _unknown(source, f"deployed_commit_command: {e}")
    if done.returncode != 0:
        return _unknown(
            source, f"deployed_commit_command {' '.join(argv)} exited with status {done.returncode}"
        )
    try:
        return _known(parse_status(done.stdout, source))
    except ValueError as e:
        return _unknown(source, f"deployed_commit_command: {e}")


# -- the repository part ---------------------------------------------------------------------------


@dataclass
class _Held:
    """A held commit with what the page shows of it."""

    info: CommitInfo
    subject: str
    source: str | None  # lanshare.checkpoint-source


def _load(repo: Repo, checksum: str, partial: set[str], cache: dict[str, _Held | None]) -> _Held | None:
    if checksum not in cache:
        try:
            commit = repo.load_commit(checksum, verify=False)
        except (MissingObject, CorruptObject):
            cache[checksum] = None
        else:
            source = commit.meta_value(CHECKPOINT_SOURCE_KEY)
            cache[checksum] = _Held(
                CommitInfo.from_commit(checksum, commit, complete=checksum not in partial),
                commit.subject,
                source if isinstance(source, str) else None,
            )
    return cache[checksum]


def _history(repo: Repo, head: str, partial: set[str], cache: dict[str, _Held | None]) -> list[_Held]:
    """The held commits from ``head`` back through parents, newest first."""
    chain: list[_Held] = []
    seen: set[str] = set()
    checksum: str | None = head
    while checksum is not None and checksum not in seen:
        held = _load(repo, checksum, partial, cache)
        if held is None:
            break
        seen.add(checksum)
        chain.append(held)
        checksum = held.info.parent
    return chain


def followed_refs(config: Config, refs: dict[str, str]) -> list[str]:
    """``[origin] refs`` first, then every other ref held (pin refs are bookkeeping, not shown)."""
    names = list(config.origin.refs)
    names += sorted(r for r in refs if r not in names and not r.startswith(PIN_REF_PREFIX))
    return names


def _path(repo: Repo, deployed: Json) -> Json:
    commit = deployed["commit"]
    if commit is None:
        return {"path": None, "path_error": None, "missing": []}
    try:
        # The deployment's own ref when the tool said (rpm-ostree's origin), else the commit's binding.
        path = compute_path(RepoGraph(repo), commit, deployed["ref"])
    except PathError as e:
        return {"path": None, "path_error": str(e), "missing": e.missing}
    except Error as e:
        return {"path": None, "path_error": str(e), "missing": []}
    return {"path": path.to_json(), "path_error": None, "missing": []}


def chain_part(config: Config, repo: Repo, deployed: Json) -> Json:
    """Refs, the checkpoint chain and the update path, from commit objects only (blocking)."""
    refs = {ref: commit for (_, ref), commit in repo.list_collection_refs().items()}
    partial = repo.partial_commits()
    cache: dict[str, _Held | None] = {}
    path = _path(repo, deployed)
    steps = {s["commit"]: n for n, s in enumerate(path["path"]["steps"], 1)} if path["path"] else {}

    ref_rows: list[Json] = []
    commits: dict[str, Json] = {}
    lanes: dict[str, list[str]] = {}
    configured = set(config.origin.refs)
    for ref in followed_refs(config, refs):
        head = refs.get(ref)
        history = _history(repo, head, partial, cache) if head else []
        lanes[ref] = []
        for held in history:
            info = held.info
            if info.checksum in commits:
                continue  # shared history: drawn on the first ref that reaches it
            lanes[ref].append(info.checksum)
            commits[info.checksum] = {
                "checksum": info.checksum,
                "ref": ref,
                "parent": info.parent,
                "timestamp": _ts(info.timestamp),
                "version": info.version,
                "subject": held.subject,
                "checkpoint": info.checkpoint,
                "target": info.target,
                "checkpoint_source": held.source,
                "complete": info.complete,
                "deployed": info.checksum == deployed["commit"],
                "path_step": steps.get(info.checksum),
            }
        head_info = history[0].info if history else None
        ref_rows.append(
            {
                "name": ref,
                "configured": ref in configured,
                "held": head is not None,
                "head": head,
                "version": head_info.version if head_info else None,
                "timestamp": _ts(head_info.timestamp) if head_info else None,
                "commits": len(history),
                "checkpoints": sum(1 for h in history if h.info.is_checkpoint),
            }
        )
    return {
        "refs": ref_rows,
        "commits": list(commits.values()),
        "switches": _switches(commits, lanes),
        **path,
    }


def _switches(commits: dict[str, Json], lanes: dict[str, list[str]]) -> list[Json]:
    switches: list[Json] = []
    for checksum, row in commits.items():
        target = row["target"]
        if not target or target not in lanes:
            continue
        lane = lanes[target]
        # The new ref's first commit names the way back (lanshare.checkpoint-source); without it the
        # switch lands on the oldest commit held on the target ref.
        landing = next(
            (c for c in lane if commits[c]["checkpoint_source"] == f"{row['ref']}@{checksum}"), None
        )
        switches.append(
            {
                "from_ref": row["ref"],
                "from_commit": checksum,
                "to_ref": target,
                "to_commit": landing or (lane[-1] if lane else None),
            }
        )
    return switches


def retention_part(config: Config, repo: Repo, engine: Engine) -> Json:
    """Why each commit stays and the disk use, from a retention plan (blocking, and slow on a big
    repository: it stats every object and walks every kept tree)."""
    started = time.monotonic()
    plan = plan_retention(repo, policy_for(_DaemonContext(config, repo, engine)))
    used = sum(plan.sizes.values())
    return {
        "kept": plan.full,
        "commit_only": plan.commit_only,
        "evicted": set(plan.evicted),
        "disk": {
            "used_bytes": used,
            "kept_bytes": plan.bytes_kept,
            "evictable_bytes": plan.bytes_freed,
            "objects": len(plan.sizes),
        },
        "computed_at": dt.datetime.now(dt.UTC).isoformat(),
        "seconds": round(time.monotonic() - started, 3),
    }


def pins(config: Config, engine: Engine) -> list[Json]:
    """``[[pin]]`` tables, then pins made with ``lanshare pin`` (recorded in the index)."""
    rows: list[Json] = [
        {"ref_glob": p.ref, "commit": p.commit, "reason": p.reason, "source": "config"} for p in config.pins
    ]
    rows += [
        {"ref_glob": p.ref_glob, "commit": p.commit, "reason": p.reason, "source": "index"}
        for p in sync.pin_rules(engine)
    ]
    return rows


def merge(chain: Json, retention: Json | None, max_size: int) -> tuple[list[Json], Json]:
    """The chain's commits with their retention fate, and the disk figures (None until computed)."""
    commits = []
    for commit in chain["commits"]:
        checksum = commit["checksum"]
        if retention is None:
            fate: Json = {"kept": [], "commit_only": [], "evictable": False}
        else:
            fate = {
                "kept": retention["kept"].get(checksum, []),
                "commit_only": retention["commit_only"].get(checksum, []),
                "evictable": checksum in retention["evicted"],
            }
        commits.append({**commit, **fate})
    figures = retention["disk"] if retention is not None else {}
    used = figures.get("used_bytes")
    disk = {
        "used_bytes": used,
        "max_bytes": max_size,
        "kept_bytes": figures.get("kept_bytes"),
        "evictable_bytes": figures.get("evictable_bytes"),
        "used_fraction": round(used / max_size, 4) if used is not None else None,
        "objects": figures.get("objects"),
    }
    return commits, disk


# -- the index part --------------------------------------------------------------------------------


def _peer_health(peer: Peer, now: dt.datetime) -> str:
    if peer.backoff_until is not None and peer.backoff_until > now:
        return "backing off"
    return "healthy" if peer.healthy else "failing"


def index_part(
    engine: Engine, served: dict[str, PeerStats], flushed: Mapping[str, int] | None = None
) -> Json:
    """Peers, transfers and where pulled bytes came from (blocking).

    ``flushed``: of ``served``, the bytes per address the daemon already added to the peers' rows.
    """
    flushed = flushed or {}
    now = dt.datetime.now(dt.UTC)
    with Session(engine) as session:
        peer_rows = list(session.scalars(select(Peer).order_by(Peer.last_seen.desc())))
        running = list(
            session.scalars(
                select(Transfer).where(Transfer.state == TransferState.RUNNING).order_by(Transfer.id.desc())
            )
        )
        finished = list(
            session.scalars(
                select(Transfer)
                .where(Transfer.state != TransferState.RUNNING)
                .order_by(Transfer.id.desc())
                .limit(RECENT_TRANSFERS)
            )
        )
        pulled_total = session.scalar(select(func.coalesce(func.sum(Transfer.bytes_done), 0))) or 0
    peers: list[Json] = []
    unclaimed = dict(served)
    for peer in peer_rows:
        # The LAN listener counts bytes per client IP since start; add them to what the index kept.
        sent_now = sum(
            unclaimed.pop(a).bytes_out - flushed.get(a, 0) for a in peer.addresses if a in unclaimed
        )
        peers.append(
            {
                "node_id": peer.node_id,
                "addresses": list(peer.addresses),
                "port": peer.port,
                "health": _peer_health(peer, now),
                "failures": peer.failures,
                "backoff_until": _iso(peer.backoff_until),
                "last_seen": _iso(peer.last_seen),
                "bytes_in": peer.bytes_in,
                "bytes_out": peer.bytes_out + sent_now,
                "last_rate": peer.last_rate,
                "refs": len(peer.holdings),
                "newest_checkpoint": peer.newest_checkpoint,
            }
        )
    transfers = [_transfer(t) for t in running + finished]
    by_commit = _bytes_by_commit(running + finished, peer_rows)
    from_peers = sum(p.bytes_in for p in peer_rows)
    # Pulls record their bytes per transfer and peers' shares per peer; what no peer served came
    # from the origin (or another non-peer source given with --from).
    from_origin = max(int(pulled_total) - from_peers, 0)
    total = from_peers + from_origin
    return {
        "peers": peers,
        "transfers": transfers,
        "savings": {
            "from_peers_bytes": from_peers,
            "from_origin_bytes": from_origin,
            "total_bytes": total,
            "saved_percent": round(100 * from_peers / total, 1) if total else None,
            "by_commit": by_commit,
        },
        "served": {
            "bytes": sum(s.bytes_out for s in served.values()),
            "requests": sum(s.requests for s in served.values()),
            "clients": len(served),
        },
    }


def _transfer(t: Transfer) -> Json:
    fraction: float | None = None
    if t.state is TransferState.DONE:
        fraction = 1.0
    elif t.objects_total:
        fraction = round(min(t.objects_done / t.objects_total, 1.0), 4)
    return {
        "id": t.id,
        "commit": t.commit,
        "ref": t.ref,
        "source": t.source,
        "state": t.state.value,
        "objects_done": t.objects_done,
        "objects_total": t.objects_total,
        "bytes_done": t.bytes_done,
        "bytes_total": t.bytes_total,
        "bytes_origin": t.bytes_origin,
        "bytes_peers": t.bytes_peers,
        "progress": fraction,
        "started_at": _iso(t.started_at),
        "finished_at": _iso(t.finished_at),
        "error": t.error,
    }


def _bytes_by_commit(transfers: list[Transfer], peers: list[Peer]) -> list[Json]:
    """Per commit, bytes from the origin and from peers: this node's pulls, and the LAN's (this node
    plus what each peer's info reported for its own recent pulls; lanshare.pull.fleet)."""
    rows: dict[str, Json] = {}

    def row(commit: str) -> Json:
        return rows.setdefault(
            commit,
            {"commit": commit, "origin_bytes": 0, "peer_bytes": 0,
             "lan_origin_bytes": 0, "lan_peer_bytes": 0, "lan_machines": 0},
        )  # fmt: skip

    mine: set[str] = set()
    for t in transfers:
        r = row(t.commit)
        r["origin_bytes"] += t.bytes_origin
        r["peer_bytes"] += t.bytes_peers
        mine.add(t.commit)
    for r in rows.values():
        r["lan_origin_bytes"], r["lan_peer_bytes"], r["lan_machines"] = r["origin_bytes"], r["peer_bytes"], 1
    for peer in peers:
        for commit, counts in (peer.pulled or {}).items():
            if commit in mine or len(rows) < RECENT_TRANSFERS:
                r = row(commit)
                r["lan_origin_bytes"] += int(counts.get("origin", 0))
                r["lan_peer_bytes"] += int(counts.get("peers", 0))
                r["lan_machines"] += 1
    return list(rows.values())
