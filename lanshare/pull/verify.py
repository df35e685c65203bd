"""Trust checks on a commit before it enters the repository (DESIGN §6).

In order: the bytes hash to the commit's name; a configured key signed it (unless
``require_signatures = false``); its ``ostree.ref-binding`` names the ref being pulled and its
``ostree.collection-binding`` the repository's collection; and it is not older than the ref's
current head.  Everything else a pull stores is named by its checksum, so this is the one place
where trust is decided.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from lanshare.config import TrustConfig
from lanshare.errors import CorruptObject, SignatureError
from lanshare.ostree import signing
from lanshare.ostree.commit_tree import COLLECTION_BINDING_KEY, REF_BINDING_KEY
from lanshare.ostree.objects import Commit, parse_metadata, sha256_hex
from lanshare.pull.errors import CommitRejected


@dataclass(frozen=True)
class TrustPolicy:
    """Which signatures a pulled commit needs."""

    require_signatures: bool = True
    gpg_keyring: Path | None = None
    ed25519_keys: tuple[str, ...] = ()  # base64, as libostree writes them

    @classmethod
    def from_config(cls, trust: TrustConfig) -> TrustPolicy:
        """The policy of a ``[trust]`` section (whose ed25519 keys are raw bytes)."""
        return cls(
            require_signatures=trust.require_signatures,
            gpg_keyring=trust.gpg_keyring,
            ed25519_keys=tuple(base64.b64encode(k).decode("ascii") for k in trust.ed25519_keys),
        )


@dataclass(frozen=True)
class VerifiedCommit:
    """A commit that passed every check, with the bytes to store."""

    checksum: str
    data: bytes
    commitmeta: bytes | None
    commit: Commit
    signed_by: str | None


def parse_commit(checksum: str, data: bytes) -> Commit:
    """The parsed commit if ``data`` hashes to ``checksum``; CorruptObject otherwise."""
    actual = sha256_hex(data)
    if actual != checksum:
        raise CorruptObject(f"{checksum}.commit", f"checksum mismatch (content hashes to {actual})")
    return Commit.from_bytes(data, f"{checksum}.commit")


def check_signatures(checksum: str, data: bytes, commitmeta: bytes | None, policy: TrustPolicy) -> str | None:
    """The signing key's id, None when unsigned commits are allowed; CommitRejected otherwise.

    A malformed ``.commitmeta`` is a CorruptObject: the source that sent it sent bad data.
    """
    # Parsed even when signatures are not required: a malformed one must not be stored.
    metadata = parse_metadata(commitmeta, f"{checksum}.commitmeta") if commitmeta is not None else None
    if not policy.require_signatures:
        return None
    try:
        verified = signing.verify_commit_signatures(
            data,
            metadata,
            gpg_keyring=policy.gpg_keyring,
            ed25519_keys=policy.ed25519_keys,
            checksum=checksum,
        )
    except SignatureError as e:
        raise CommitRejected(str(e), intrinsic=False) from None
    return verified.key_id


def check_bindings(checksum: str, commit: Commit, ref: str | None, collection_id: str | None) -> None:
    """Refuse a commit bound to other refs than ``ref``, or to another collection."""
    refs = commit.meta_value(REF_BINDING_KEY)
    if ref is not None and isinstance(refs, list) and ref not in refs:
        raise CommitRejected(
            f"commit {checksum} is bound to {', '.join(map(str, refs)) or 'no ref'}, "
            f"not to {ref} (ostree.ref-binding): refusing to put it on {ref}",
            intrinsic=True,
        )
    bound = commit.meta_value(COLLECTION_BINDING_KEY)
    if isinstance(bound, str) and bound and collection_id and bound != collection_id:
        raise CommitRejected(
            f"commit {checksum} is bound to collection {bound}, not to this repository's "
            f"{collection_id} (ostree.collection-binding)",
            intrinsic=True,
        )


def _when(timestamp: int) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def check_not_older(checksum: str, commit: Commit, ref: str, head: str, head_commit: Commit) -> None:
    """Refuse to move ``ref`` from ``head`` to an older commit."""
    if commit.timestamp < head_commit.timestamp:
        raise CommitRejected(
            f"refusing to move {ref} backwards: commit {checksum} ({_when(commit.timestamp)}) is older "
            f"than its current head {head} ({_when(head_commit.timestamp)})",
            intrinsic=True,
        )


def verify_commit(
    checksum: str,
    data: bytes,
    commitmeta: bytes | None,
    policy: TrustPolicy,
    *,
    ref: str | None,
    collection_id: str | None,
    head: tuple[str, Commit] | None,
) -> VerifiedCommit:
    """Run every check (blocking: gpgv runs as a subprocess); raises CorruptObject or CommitRejected."""
    commit = parse_commit(checksum, data)
    # Signatures first: nothing else in an unsigned commit's metadata is worth believing.
    signed_by = check_signatures(checksum, data, commitmeta, policy)
    check_bindings(checksum, commit, ref, collection_id)
    if ref is not None and head is not None and head[0] != checksum:
        check_not_older(checksum, commit, ref, head[0], head[1])
    return VerifiedCommit(checksum, data, commitmeta, commit, signed_by)
