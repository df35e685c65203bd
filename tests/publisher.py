"""A publisher's GPG-signed repository and hostile copies of it (``tests/test_pull.py``, ``test_trust.py``).

:func:`publish` commits v1 then v2 on ``os/stable``, both signed by the trusted test key, and makes
the variants every trust test wants: a newer unsigned commit, a newer one signed by an unknown key,
and ``os/stable`` moved back to v1.  A test module adds its own with :meth:`Published.variant`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lanshare.ostree.repo import Repo
from tests.conftest import build_tree, lanshare
from tests.gpg_fixtures import GpgKey, GpgKeys

BASE_TIME = 1_700_000_000
# Newer than v2: what a hostile variant offers instead of it.
NEWER = BASE_TIME + 200


def commit(repo: Path, tree: Path, timestamp: int, *sign: str | Path, branch: str = "os/stable") -> str:
    """Commit with ``lanshare commit`` and return the new head of ``branch``."""
    args: list[str | Path] = ["commit", "--repo", repo, "--branch", branch, "--tree", tree]
    args += ["--timestamp", str(timestamp)]
    assert lanshare(*args, "--no-xattrs", *sign) == 0
    head = Repo.open(repo).read_ref(branch)
    assert head is not None
    return head


def signed_by(keys: GpgKeys, key: GpgKey) -> tuple[str | Path, ...]:
    """The ``lanshare commit`` options that sign with ``key``."""
    return ("--gpg-sign", key.key_id, "--gpg-homedir", keys.homedir)


@dataclass(frozen=True)
class Published:
    """A publisher repo (v1 then v2 on os/stable, GPG-signed) and hostile variants of it."""

    repo: Path
    v1: str
    v2: str
    keyring: Path
    variants: dict[str, tuple[Path, str]]  # name → (repo, the commit its os/stable points to)

    def variant(self, name: str) -> Path:
        """A copy of the publisher's repository (at v2), next to it, named ``name``."""
        path = self.repo.parent / name
        shutil.copytree(self.repo, path, symlinks=True)
        return path


def publish(
    base: Path, keys: GpgKeys, make_tree: Callable[[Path, int], Path] = build_tree, *, name: str = "repo"
) -> Published:
    """The publisher's repository ``base/name`` and the variants ``unsigned``, ``unknown-key``, ``downgrade``.

    Trees ``base/t1`` to ``base/t4`` come from ``make_tree(path, seed)``.
    """
    repo = base / name
    trusted = signed_by(keys, keys.trusted)
    v1 = commit(repo, make_tree(base / "t1", 1), BASE_TIME, *trusted)
    v2 = commit(repo, make_tree(base / "t2", 2), BASE_TIME + 100, *trusted)
    published = Published(repo, v1, v2, keys.trusted.keyring, {})
    path = published.variant("unsigned")
    published.variants["unsigned"] = (path, commit(path, make_tree(base / "t3", 3), NEWER))
    path = published.variant("unknown-key")
    other = signed_by(keys, keys.other)
    published.variants["unknown-key"] = (path, commit(path, make_tree(base / "t4", 4), NEWER, *other))
    path = published.variant("downgrade")
    Repo.open(path).write_ref("os/stable", v1)
    published.variants["downgrade"] = (path, v1)
    return published
