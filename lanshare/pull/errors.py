"""Exceptions of the pull engine."""

from __future__ import annotations

from lanshare.errors import PullError

__all__ = ["CommitRejected", "LocalWriteError", "PullError", "SourceFailure"]


class CommitRejected(PullError):
    """A commit failed a trust check (checksum, signature, ref binding, downgrade)."""

    def __init__(self, message: str, *, intrinsic: bool) -> None:
        super().__init__(message)
        # Intrinsic: the commit itself is at fault (binding, age), so no other source can fix
        # it; otherwise (signatures live in the unchecksummed .commitmeta) another source may.
        self.intrinsic = intrinsic


class LocalWriteError(PullError):
    """This machine cannot store what it fetched (disk full, read-only…): no source is at fault."""


class SourceFailure(Exception):
    """One source failed for one request: transport, HTTP status, protocol or bad data."""

    def __init__(self, reason: str, *, bad_data: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.bad_data = bad_data
