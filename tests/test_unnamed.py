"""Objects written through unnamed files (O_TMPFILE + linkat), and the named-file fallback."""

from __future__ import annotations

import errno
import os
import random
import stat
import tempfile
from pathlib import Path

import pytest

from lanshare.errors import CorruptObject
from lanshare.ostree import unnamed
from lanshare.ostree.content import FileHeader
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.pull import http


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
    # ENOENT is retried once (the directory might have been in the making), then never tried again.
    assert used == ["empty-path", "empty-path", "proc", "proc"]
    assert (tmp_path / "objects" / "b").read_bytes() == b"two"


def _big_filez(tmp_path: Path) -> tuple[str, bytes]:
    """A .filez of ~2 MB of incompressible data: past what a download keeps in memory."""
    source = Repo.init(tmp_path / "source")
    data = random.Random(3).randbytes(2 * http.SPOOL_IN_MEMORY)
    checksum = source.write_content(FileHeader(0, 0, 0o100644, size=len(data)), [data])
    return checksum, source.object_path(checksum, ObjectType.FILE).read_bytes()


def _spooled(repo: Repo, filez: bytes) -> http.ObjectBuffer:
    buffer = http.ObjectBuffer("big.filez", repo.tmp_dir, filez=True)
    for start in range(0, len(filez), 65536):
        buffer.write(filez[start : start + 65536])
    return buffer


def test_a_big_download_is_verified_and_named_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checksum, filez = _big_filez(tmp_path)
    repo = Repo.init(tmp_path / "repo")
    buffer = _spooled(repo, filez)
    payload = buffer.payload()
    assert not isinstance(payload, bytes)  # spooled to an unnamed file, not kept in memory

    def no_copy(*args: object, **kwargs: object) -> object:
        raise AssertionError("copied a spooled download instead of naming it")

    monkeypatch.setattr(tempfile, "mkstemp", no_copy)
    repo.write_filez(checksum, payload)
    buffer.close()
    assert repo.object_path(checksum, ObjectType.FILE).read_bytes() == filez
    assert os.listdir(repo.tmp_dir) == []


def test_a_corrupt_big_download_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    checksum, filez = _big_filez(tmp_path)
    repo = Repo.init(tmp_path / "repo")
    damaged = filez[:-100] + bytes([filez[-100] ^ 1]) + filez[-99:]
    buffer = _spooled(repo, damaged)
    payload = buffer.payload()
    assert not isinstance(payload, bytes)
    with pytest.raises(CorruptObject):
        repo.write_filez(checksum, payload)
    buffer.close()
    assert not repo.has_object(checksum, ObjectType.FILE)
    assert os.listdir(repo.tmp_dir) == []


def test_a_directory_made_by_another_writer_meanwhile_is_not_taken_for_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOENT because objects/XX did not exist yet, though it does by the time we look: retried,
    and the way stays in use (several workers create the same directories at once)."""
    real = unnamed._link_empty_path
    calls: list[int] = []

    def first_call_races(fd: int, target: bytes) -> int:
        calls.append(fd)
        if len(calls) == 1:
            os.makedirs(os.path.dirname(target), exist_ok=True)  # the other writer, just now
            return errno.ENOENT
        return real(fd, target)

    monkeypatch.setattr(unnamed, "_link_empty_path", first_call_races)
    (tmp_path / "tmp").mkdir()
    writer = unnamed.UnnamedWriter(str(tmp_path / "tmp"))
    assert writer.write(str(tmp_path / "objects" / "ab" / "c.filez"), b"one")
    assert writer.write(str(tmp_path / "objects" / "ab" / "d.filez"), b"two")
    assert len(calls) == 3 and writer.available
    assert (tmp_path / "objects" / "ab" / "d.filez").read_bytes() == b"two"
