"""Regenerate a repository's ``summary`` (and ``summary.sig``), as ``ostree summary -u`` does."""

from __future__ import annotations

import logging
import os
from contextlib import suppress
from pathlib import Path

from lanshare.errors import Error
from lanshare.ostree import signing
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.ostree.summary import SummaryRef, build_summary, parse_summary

log = logging.getLogger(__name__)

# lanshare's own bookkeeping refs (pins) are local state, not something to advertise.
PRIVATE_REF_PREFIX = "lanshare/"


def _entry(repo: Repo, name: str, commit: str) -> SummaryRef:
    data = repo.read_metadata_bytes(commit, ObjectType.COMMIT)
    parsed = repo.load_commit(commit)
    return SummaryRef(name, commit, len(data), parsed.timestamp, parsed.version)


def summary_refs(repo: Repo) -> tuple[list[SummaryRef], dict[str, list[SummaryRef]]]:
    """The main ref list and the other collections' refs, laid out as libostree does."""
    main: list[SummaryRef] = []
    others: dict[str, list[SummaryRef]] = {}
    for (collection_id, name), commit in repo.list_collection_refs().items():
        if name.startswith(PRIVATE_REF_PREFIX):
            continue
        if collection_id == repo.collection_id:
            main.append(_entry(repo, name, commit))
        elif collection_id is not None:
            others.setdefault(collection_id, []).append(_entry(repo, name, commit))
    return main, others


def regenerate_summary(
    repo: Repo,
    *,
    gpg_key_ids: list[str] | None = None,
    gpg_homedir: Path | None = None,
    ed25519_secret_keys: list[str] | None = None,
    last_modified: int | None = None,
) -> bytes:
    """Write ``summary`` atomically; sign it into ``summary.sig`` or remove a stale signature."""
    main, others = summary_refs(repo)
    data = build_summary(
        main, collection_id=repo.collection_id, collection_map=others, last_modified=last_modified
    )
    sig_path = repo.path / "summary.sig"
    if gpg_key_ids or ed25519_secret_keys:
        signature = signing.sign_summary(
            data,
            gpg_key_ids=gpg_key_ids or (),
            gpg_homedir=gpg_homedir,
            ed25519_secret_keys=ed25519_secret_keys or (),
        )
        # Between the two renames the pair disagrees for an instant, as with libostree; a client
        # that fails to verify fetches both again.
        repo.atomic_write(repo.path / "summary", [data], durable=True)
        repo.atomic_write(sig_path, [signature], durable=True)
    else:
        with suppress(FileNotFoundError):
            os.unlink(sig_path)
        repo.atomic_write(repo.path / "summary", [data], durable=True)
    return data


def refresh_summary(repo: Repo) -> bool:
    """Regenerate ``summary`` when it is missing or lists other refs than the repository; True if it did.

    Called after every pull (the CLI's and the daemon's), so stock ``ostree pull`` clients of the
    LAN listener see the refs this node holds now.
    """
    main, others = summary_refs(repo)
    wanted = (
        repo.collection_id,
        {(r.name, r.checksum) for r in main},
        {cid: {(r.name, r.checksum) for r in refs} for cid, refs in others.items()},
    )
    try:
        current = parse_summary((repo.path / "summary").read_bytes())
        have = (
            current.collection_id,
            {(r.name, r.checksum) for r in current.refs},
            {cid: {(r.name, r.checksum) for r in refs} for cid, refs in current.collection_map.items()},
        )
        if have == wanted:
            return False
    except (FileNotFoundError, Error):
        pass
    signed = (repo.path / "summary.sig").exists()
    regenerate_summary(repo)
    if signed:
        # The daemon holds no signing key: a stale signature would only make verifying clients fail.
        log.warning(
            "refs changed since the summary was signed: summary.sig removed (re-sign: lanshare summary -u)"
        )
    return True
