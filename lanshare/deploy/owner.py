"""Write into the cache as the cache's owner when ``lanshare upgrade`` runs as root.

The daemon runs as its own unprivileged user and owns the cache (repository and index); ``upgrade``
runs as root because deploying needs it.  A root-owned object, ref or index file in the cache would
be one the daemon cannot prune or update, so ``upgrade`` takes the cache owner's effective user and
group for the whole run and goes back to root only around what deploys (the deployer, the hook,
the reboot command).  Only the effective ids change (the saved ones stay root), so switching back
is always possible; on Linux the change applies to every thread of the process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


def cache_owner(*paths: Path) -> tuple[int, int] | None:
    """The uid and gid owning the first of ``paths`` that exists; None when none does."""
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        return st.st_uid, st.st_gid
    return None


@dataclass
class Identity:
    """The process's identity while it works on the cache, and root's for deploying."""

    uid: int = 0
    gid: int = 0
    _root_groups: list[int] = field(default_factory=list)

    @property
    def dropped(self) -> bool:
        return self.uid != 0

    @classmethod
    def become_owner(cls, *paths: Path) -> Identity:
        """Take the effective ids of the cache's owner if running as root and it is someone else."""
        owner = cache_owner(*paths)
        if os.geteuid() != 0 or owner is None or owner[0] == 0:
            return cls()
        identity = cls(owner[0], owner[1], os.getgroups())
        os.setgroups([owner[1]])
        os.setegid(owner[1])
        os.seteuid(owner[0])
        return identity

    @contextmanager
    def as_root(self) -> Iterator[None]:
        """Root again for the duration (a no-op when nothing was dropped)."""
        if not self.dropped:
            yield
            return
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(self._root_groups)
        try:
            yield
        finally:
            os.setgroups([self.gid])
            os.setegid(self.gid)
            os.seteuid(self.uid)
