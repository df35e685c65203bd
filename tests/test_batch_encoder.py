"""The batch encoder reads objects beneath objects/ only: planted symlinks and FIFOs are ABSENT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lanshare import wire
from lanshare.ostree.objects import ObjectType
from lanshare.server import opener
from lanshare.server.batch import BATCH_OBJECT_BYTES, BatchEncoder, open_objects_dir, read_object


def _name(byte: str) -> wire.ObjectName:
    return wire.ObjectName(byte * 64, ObjectType.FILE)


def test_only_regular_files_beneath_objects_are_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for peers")
    objects = tmp_path / "repo" / "objects"
    (objects / "aa").mkdir(parents=True)
    (objects / "aa" / f"{'a' * 62}.filez").write_bytes(b"real object")
    (objects / "bb").mkdir()
    (objects / "bb" / f"{'b' * 62}.filez").symlink_to(secret)  # a planted file symlink
    (objects / "cc").symlink_to(tmp_path)  # a planted directory symlink
    (tmp_path / f"{'c' * 62}.filez").write_bytes(b"outside")
    (objects / "dd").mkdir()
    os.mkfifo(objects / "dd" / f"{'d' * 62}.filez")  # would hang a reader without O_NONBLOCK
    (objects / "ee").mkdir()
    (objects / "ee" / f"{'e' * 62}.filez").write_bytes(b"x" * (BATCH_OBJECT_BYTES + 1))
    fd = open_objects_dir(tmp_path / "repo")
    try:
        assert read_object(fd, _name("a")) == (b"real object", wire.PRESENT)
        for byte in "bcdf":
            assert read_object(fd, _name(byte)) == (None, wire.ABSENT), byte
        assert read_object(fd, _name("e")) == (None, wire.TOO_LARGE)
    finally:
        os.close(fd)


def test_a_stream_decodes_to_every_record_in_request_order(tmp_path: Path) -> None:
    objects = tmp_path / "repo" / "objects"
    names = [wire.ObjectName(f"{i:02x}" * 32, ObjectType.FILE) for i in range(0, 256, 3)]
    for i, name in enumerate(names):
        if i % 5:  # every fifth is missing
            (objects / name.checksum[:2]).mkdir(parents=True, exist_ok=True)
            (objects / name.checksum[:2] / f"{name.checksum[2:]}.filez").write_bytes(os.urandom(9000))
    records = _decode(BatchEncoder(tmp_path / "repo", names), names)
    for i, (name, (data, status)) in enumerate(zip(names, records, strict=True)):
        path = objects / name.checksum[:2] / f"{name.checksum[2:]}.filez"
        assert (status, data) == ((wire.ABSENT, None) if i % 5 == 0 else (wire.PRESENT, path.read_bytes()))


def _decode(encoder: BatchEncoder, names: list[wire.ObjectName]) -> list[tuple[bytes | None, int]]:
    decoder = wire.BatchDecoder(names)
    records = []
    while (group := encoder.next_group()) is not None:
        records += decoder.feed(group)
    decoder.finish()
    assert [r[0] for r in records] == names
    return [(data, status) for _, data, status in records]


@pytest.mark.parametrize("with_openat2", [True, False], ids=["openat2", "portable"])
def test_the_stream_refuses_planted_files_whichever_way_objects_are_opened(
    tmp_path: Path, with_openat2: bool
) -> None:
    """Objects opened with openat2 from cached lookups, or beneath objects/ (after a cache miss,
    or without openat2): the same records, symlinks and FIFOs ABSENT, large files TOO_LARGE."""
    tmp_path = Path(os.path.realpath(tmp_path))  # openat2 refuses a symlink anywhere in the path
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for peers")
    repo = tmp_path / "repo"
    objects = repo / "objects"
    (objects / "aa").mkdir(parents=True)
    (objects / "aa" / f"{'a' * 62}.filez").write_bytes(b"real object")
    (objects / "bb").mkdir()
    (objects / "bb" / f"{'b' * 62}.filez").symlink_to(secret)
    (objects / "cc").symlink_to(tmp_path)
    (tmp_path / f"{'c' * 62}.filez").write_bytes(b"outside")
    (objects / "dd").mkdir()
    os.mkfifo(objects / "dd" / f"{'d' * 62}.filez")
    (objects / "ee").mkdir()
    (objects / "ee" / f"{'e' * 62}.filez").write_bytes(b"x" * (BATCH_OBJECT_BYTES + 1))
    names = [_name(byte) for byte in "abcdef"]
    open_cached = opener.cached_opener(os.fspath(repo)) if with_openat2 else None
    if with_openat2 and open_cached is None:
        pytest.skip("this kernel has no openat2 with RESOLVE_CACHED (Linux 5.12)")
    expected = [(b"real object", wire.PRESENT)] + [(None, wire.ABSENT)] * 3
    expected += [(None, wire.TOO_LARGE), (None, wire.ABSENT)]
    assert _decode(BatchEncoder(repo, names, open_cached), names) == expected
    if open_cached is not None:
        # Every lookup a cache miss: each object is opened the portable way, with the same records.
        def uncached(path: bytes) -> int:
            raise BlockingIOError(11, "not cached")

        assert _decode(BatchEncoder(repo, names, uncached), names) == expected
