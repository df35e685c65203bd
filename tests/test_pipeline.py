"""The store pipeline: worker processes verify and store whole groups, with every safety property kept."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from lanshare.errors import CorruptObject
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.pull.errors import LocalWriteError
from lanshare.pull.pipeline import Payload, StorePipeline
from lanshare.wire import ObjectName
from tests.conftest import lanshare


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[ObjectName, bytes]]:
    """Thirty-odd content objects (small text and random files) as a peer would send them."""
    base = tmp_path_factory.mktemp("source")
    tree = base / "tree"
    tree.mkdir()
    for i in range(30):
        (tree / f"f{i}").write_bytes(os.urandom(200 + 40 * i) if i % 2 else b"text line\n" * (i + 1))
    assert lanshare("commit", "--repo", base / "repo", "--branch", "b", "--tree", tree, "--no-xattrs") == 0
    source = Repo.open(base / "repo")
    return [
        (ObjectName(c, k), path.read_bytes()) for c, k, path in source.iter_objects() if k is ObjectType.FILE
    ]


def _store(repo: Repo, items: list[tuple[ObjectName, Payload]], workers: int = 2) -> tuple[list[int], object]:
    async def run() -> tuple[list[int], object]:
        pipeline = StorePipeline(repo, workers)
        pipeline.start()
        try:
            result = await pipeline.store(items)
            assert pipeline.groups_in_processes == (1 if workers else 0)
            return result
        finally:
            await pipeline.close()

    return asyncio.run(run())


def _visible(repo: Repo) -> set[str]:
    return {c for c, _, _ in repo.iter_objects()}


def test_a_group_is_stored_in_a_worker_process_and_passes_fsck(
    tmp_path: Path, objects: list[tuple[ObjectName, bytes]]
) -> None:
    repo = Repo.init(tmp_path / "repo")
    sizes, error = _store(repo, list(objects))
    assert error is None and sizes == [len(data) for _, data in objects]
    assert _visible(repo) == {n.checksum for n, _ in objects}
    for name, data in objects:
        assert repo.object_path(name.checksum, name.kind).read_bytes() == data
    assert not list(repo.tmp_dir.iterdir())


def test_a_corrupt_object_stops_the_group_is_named_and_never_becomes_visible(
    tmp_path: Path, objects: list[tuple[ObjectName, bytes]]
) -> None:
    repo = Repo.init(tmp_path / "repo")
    items: list[tuple[ObjectName, Payload]] = list(objects)
    bad_name, bad = objects[10]
    items[10] = (bad_name, bad[:-3] + bytes([bad[-3] ^ 0x40]) + bad[-2:])
    sizes, error = _store(repo, items)
    # Everything before it is stored, it and everything after it are not: the caller retries
    # the rest elsewhere and blames the source that sent it.
    assert len(sizes) == 10
    assert isinstance(error, CorruptObject) and bad_name.checksum in str(error)
    assert _visible(repo) == {n.checksum for n, _ in objects[:10]}
    assert not list(repo.tmp_dir.iterdir())


def test_a_write_this_machine_cannot_make_is_a_local_error(
    tmp_path: Path, objects: list[tuple[ObjectName, bytes]]
) -> None:
    repo = Repo.init(tmp_path / "repo")
    # As root, permissions would not stop a write: a file where a directory should be does.
    (repo.objects_dir / objects[0][0].checksum[:2]).write_text("not a directory")
    sizes, error = _store(repo, list(objects))
    assert sizes == [] and isinstance(error, LocalWriteError)
    assert objects[0][0].checksum in str(error) and "Not a directory" in str(error)


def test_a_dead_worker_falls_back_to_threads(tmp_path: Path, objects: list[tuple[ObjectName, bytes]]) -> None:
    repo = Repo.init(tmp_path / "repo")

    async def run() -> tuple[list[int], object]:
        pipeline = StorePipeline(repo, 1)
        pipeline.start()
        await pipeline.store(list(objects[:10]))
        assert pipeline._pool is not None
        for pid in list(pipeline._pool._processes):  # what the OOM killer would do
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        try:
            return await pipeline.store(list(objects[10:]))
        finally:
            await pipeline.close()

    sizes, error = asyncio.run(run())
    assert error is None and len(sizes) == len(objects) - 10
    assert _visible(repo) == {n.checksum for n, _ in objects}


_ORPHAN_PROBE = """
import asyncio, sys, time
from pathlib import Path
from lanshare.ostree.repo import Repo
from lanshare.pull.pipeline import StorePipeline

async def main():
    pipeline = StorePipeline(Repo.init(Path(sys.argv[1])), 2)
    pipeline.start()
    await asyncio.sleep(0.5)
    print(" ".join(str(p) for p in pipeline._pool._processes), flush=True)
    time.sleep(60)

asyncio.run(main())
"""


def test_workers_die_with_a_killed_pull(tmp_path: Path) -> None:
    """kill -9 of a pull (no chance to stop its pool) leaves no worker process behind."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_PROBE, str(tmp_path / "repo")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert len(workers) == 2
    proc.kill()
    proc.wait()
    proc.stdout.close()
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [pid for pid in workers if os.path.exists(f"/proc/{pid}")]
    assert not alive, f"workers {alive} outlived their pull"


def _forked(pipeline: StorePipeline) -> bool:
    return pipeline._pool is not None


def test_no_worker_is_forked_until_a_group_needs_one(
    tmp_path: Path, objects: list[tuple[ObjectName, bytes]]
) -> None:
    """A daemon polling an up-to-date ref, or a pull of a few objects, forks nothing."""
    repo = Repo.init(tmp_path / "repo")

    async def run() -> None:
        pipeline = StorePipeline(repo, 2)
        try:
            assert (await pipeline.store(list(objects[:3])))[1] is None
            assert not _forked(pipeline) and pipeline.groups_in_threads == 1
            assert (await pipeline.store(list(objects[3:])))[1] is None
            assert _forked(pipeline) and pipeline.groups_in_processes == 1
        finally:
            await pipeline.close()

    asyncio.run(run())
    assert _visible(repo) == {n.checksum for n, _ in objects}
