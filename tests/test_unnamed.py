"""Objects written through unnamed files (O_TMPFILE + linkat), and the named-file fallback."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from lanshare.ostree import unnamed
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo


def test_writes_the_file_whole_with_its_mode_whatever_the_umask(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    (tmp_path / "objects").mkdir()
    writer = unnamed.UnnamedWriter(str(tmp_path / "tmp"))
    old = os.umask(0o077)
    try:
        assert writer.write(str(tmp_path / "objects" / "ab" / "cd.filez"), b"payload")
    finally:
        os.umask(old)
    target = tmp_path / "objects" / "ab" / "cd.filez"
    assert target.read_bytes() == b"payload"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(tmp_path / "tmp") == []  # nothing named was ever made there


def test_an_existing_file_is_left_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    target = tmp_path / "present"
    target.write_bytes(b"first")
    assert unnamed.UnnamedWriter(str(tmp_path / "tmp")).write(str(target), b"second")
    assert target.read_bytes() == b"first"


def test_where_no_way_of_naming_works_the_repo_writes_named_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(fd: int, target: bytes) -> int:
        return errno.EXDEV  # what /proc/self/fd linking gets in some sandboxes

    monkeypatch.setattr(unnamed, "_link_empty_path", refused)
    monkeypatch.setattr(unnamed, "_link_proc", refused)
    repo = Repo.init(tmp_path / "repo")
    checksum = repo.write_metadata(ObjectType.DIR_META, _dirmeta(tmp_path))
    assert not repo._unnamed.available
    assert repo.has_object(checksum, ObjectType.DIR_META)
    assert repo.write_metadata(ObjectType.DIR_META, _dirmeta(tmp_path)) == checksum
    assert list((repo.path / "tmp").glob("tmpobject-*")) == []


def _dirmeta(tmp_path: Path) -> bytes:
    from lanshare.ostree.objects import DirMeta

    return DirMeta(uid=0, gid=0, mode=0o40755, xattrs=[]).to_bytes()


def test_without_the_capability_the_proc_link_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unprivileged process gets ENOENT from AT_EMPTY_PATH: the /proc/self/fd way is tried next."""
    used: list[str] = []

    def refused(fd: int, target: bytes) -> int:
        used.append("empty-path")
        return errno.ENOENT

    def by_proc(fd: int, target: bytes) -> int:
        used.append("proc")
        with open(f"/proc/self/fd/{fd}", "rb") as data, open(target, "wb") as f:
            f.write(data.read())  # as a successful link would leave it
        return 0

    monkeypatch.setattr(unnamed, "_link_empty_path", refused)
    monkeypatch.setattr(unnamed, "_link_proc", by_proc)
    (tmp_path / "tmp").mkdir()
    (tmp_path / "objects").mkdir()
    writer = unnamed.UnnamedWriter(str(tmp_path / "tmp"))
    assert writer.write(str(tmp_path / "objects" / "a"), b"one")
    assert writer.write(str(tmp_path / "objects" / "b"), b"two")
    assert used == ["empty-path", "proc", "proc"]  # the refused way is not tried again
    assert (tmp_path / "objects" / "b").read_bytes() == b"two"
