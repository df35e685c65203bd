"""Keep the index in step with the repository, which stays the source of truth."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session

from lanshare.index.db import writer
from lanshare.index.holders import Holder
from lanshare.index.models import Commit, Lease, Pin, PinSource, Ref, Transfer, TransferState, utcnow
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.retention import PIN_REF_PREFIX, PinRule, load_commits, object_sizes
from lanshare.update_path import CommitInfo

COMMIT_PIN_PREFIX = PIN_REF_PREFIX + "commit/"
REF_PIN_PREFIX = PIN_REF_PREFIX + "ref/"


@dataclass
class ReindexReport:
    """What ``lanshare reindex`` found in the repository."""

    commits: int = 0
    refs: int = 0
    pins_restored: int = 0


def _ref_of_commits(repo: Repo, commits: dict[str, CommitInfo]) -> dict[str, str]:
    """Each commit's ref: the first ref (by name) whose held history contains it."""
    owner: dict[str, str] = {}
    for (_, ref), head in sorted(repo.list_collection_refs().items(), key=lambda item: item[0][1]):
        if ref.startswith(PIN_REF_PREFIX):
            continue
        checksum: str | None = head
        seen: set[str] = set()
        while checksum is not None and checksum in commits and checksum not in seen:
            seen.add(checksum)
            owner.setdefault(checksum, ref)
            checksum = commits[checksum].parent
    return owner


def _commit_row(info: CommitInfo, ref: str | None) -> Commit:
    return Commit(
        checksum=info.checksum,
        ref=ref or (info.ref_binding[0] if info.ref_binding else None),
        parent=info.parent,
        timestamp=info.timestamp,
        version=info.version,
        is_checkpoint=info.checkpoint,
        checkpoint_target=info.target,
        target_key=info.target_key,
        complete=info.complete,
    )


def reindex(engine: Engine, repo: Repo) -> ReindexReport:
    """Rebuild commits and refs from the repository; restore pins that only survive as pin refs."""
    report = ReindexReport()
    commits = load_commits(repo, object_sizes(repo))
    owners = _ref_of_commits(repo, commits)
    refs = repo.list_collection_refs()
    with Session(writer(engine)) as session, session.begin():
        last_used = {row[0]: row[1] for row in session.execute(select(Commit.checksum, Commit.last_used))}
        session.execute(delete(Commit))
        session.execute(delete(Ref))
        for checksum, info in commits.items():
            row = _commit_row(info, owners.get(checksum))
            row.last_used = last_used.get(checksum) or utcnow()
            session.add(row)
        for (collection_id, name), commit in refs.items():
            session.add(Ref(name=name, collection_id=collection_id or "", commit=commit))
        known = {(p.ref_glob, p.commit) for p in session.scalars(select(Pin))}
        for (_, name), commit in refs.items():
            rule = pin_rule_from_ref(name, commit)
            if rule and (rule.ref_glob, rule.commit) not in known:
                session.add(
                    Pin(ref_glob=rule.ref_glob, commit=rule.commit, reason=rule.reason, source=PinSource.CLI)
                )
                report.pins_restored += 1
    report.commits, report.refs = len(commits), len(refs)
    return report


def pin_rule_from_ref(name: str, commit: str) -> PinRule | None:
    """The pin a mirror ref under ``lanshare/pins/`` stands for (its reason lives only in the index)."""
    if name.startswith(COMMIT_PIN_PREFIX):
        return PinRule(commit=name.removeprefix(COMMIT_PIN_PREFIX), reason="restored from its pin ref")
    if name.startswith(REF_PIN_PREFIX):
        return PinRule(ref_glob=name.removeprefix(REF_PIN_PREFIX), reason="restored from its pin ref")
    return None


def active_leases(engine: Engine) -> set[str]:
    """Commits held by unexpired leases of pulls in progress (leases of dead processes left out)."""
    with Session(engine) as session:
        leases = session.scalars(select(Lease).where(Lease.expires_at > utcnow())).all()
    return {lease.commit for lease in leases if not _holder_is_dead(lease)}


def drop_dead_leases(engine: Engine) -> int:
    """Delete leases whose holder process is gone (a killed pull); returns how many."""
    with Session(writer(engine)) as session, session.begin():
        dead = [lease.id for lease in session.scalars(select(Lease)) if _holder_is_dead(lease)]
        if dead:
            session.execute(delete(Lease).where(Lease.id.in_(dead)))
    return len(dead)


def _holder_is_dead(lease: Lease) -> bool:
    if lease.pid is None or lease.host is None:
        return False  # a lease from before holders were recorded: it expires by time
    return Holder(lease.pid, lease.start_ticks, lease.boot_id, lease.pid_ns, lease.host).is_dead()


def pin_rules(engine: Engine) -> list[PinRule]:
    """Admin pins recorded in the index."""
    with Session(engine) as session:
        return [PinRule(p.ref_glob, p.commit, p.reason) for p in session.scalars(select(Pin))]


def last_used(engine: Engine) -> dict[str, float]:
    """When each indexed commit was last served or deployed, as Unix time."""
    with Session(engine) as session:
        rows = session.execute(select(Commit.checksum, Commit.last_used)).all()
    return {row[0]: row[1].timestamp() for row in rows}


def record_commits(engine: Engine, repo: Repo, commits: Iterable[str], ref: str | None = None) -> None:
    """Add or refresh the index rows of ``commits`` (held in ``repo``) and of ``ref``, after a pull."""
    partial = repo.partial_commits()
    # Reads then writes: on SQLite take the write lock up front, or a concurrent writer makes the
    # upgrade fail at once instead of waiting.
    with Session(writer(engine)) as session, session.begin():
        for checksum in commits:
            if not repo.has_object(checksum, ObjectType.COMMIT):
                continue
            info = CommitInfo.from_commit(
                checksum, repo.load_commit(checksum), complete=checksum not in partial
            )
            row = _commit_row(info, ref)
            existing = session.get(Commit, checksum)
            if existing is not None:
                row.ref = existing.ref or row.ref
                row.last_used = existing.last_used
            session.merge(row)
        if ref is not None and (head := repo.read_ref(ref)) is not None:
            session.merge(Ref(name=ref, collection_id=repo.collection_id or "", commit=head))


def interrupt_running_transfers(engine: Engine, reason: str) -> int:
    """Close transfers left "running" by a process that died mid-pull; returns how many."""
    with Session(writer(engine)) as session, session.begin():
        result = session.execute(
            update(Transfer)
            .where(Transfer.state == TransferState.RUNNING)
            .values(state=TransferState.FAILED, error=reason, finished_at=utcnow())
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
