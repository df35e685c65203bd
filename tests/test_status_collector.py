"""The status page's cached chain follows the repository, whatever order a pull writes things in."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from lanshare.config import load_config
from lanshare.index.db import open_index
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.status import collector
from lanshare.status.recent import RecentErrors
from tests.conftest import build_tree, lanshare


def _commit(repo: Path, tree: Path) -> str:
    args = ("--repo", repo, "--branch", "os/stable", "--tree", tree, "--no-xattrs")
    assert lanshare("commit", *args) == 0
    head = Repo.open(repo).read_ref("os/stable")
    assert head is not None
    return head


def _checksums(snapshot: dict[str, Any]) -> list[str]:
    return [c["checksum"] for c in snapshot["chain"]["commits"]]


def test_a_commit_object_written_after_its_partial_marker_shows_in_the_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "repo"
    v1 = _commit(path, build_tree(tmp_path / "t1", 1))
    v2 = _commit(path, build_tree(tmp_path / "t2", 2))
    repo = Repo.open(path)
    config_file = tmp_path / "lanshare.toml"
    config_file.write_text(
        f'[repo]\npath = "{path}"\n[database]\nurl = "sqlite:///{tmp_path / "index.sqlite"}"\n'
    )
    config = load_config(config_file)
    index = open_index(config.database.url)
    # Every read is fresh; the retention plan (a child process) is not what this is about.
    monkeypatch.setattr(collector, "SNAPSHOT_TTL", 0.0)
    monkeypatch.setattr(collector.StatusCollector, "_start_retention", lambda self, key: None)

    # A pull fetching v1 (history behind v2) marks it partial, then writes its commit object.
    v1_object = repo.object_path(v1, ObjectType.COMMIT)
    v1_bytes = v1_object.read_bytes()
    v1_object.unlink()
    repo.mark_partial(v1)

    async def chains() -> tuple[list[str], list[str]]:
        sources = collector.StatusSources(config, "node", repo, index, RecentErrors())
        status = collector.StatusCollector(sources)
        try:
            between = await status.snapshot()  # taken between the marker and the object
            v1_object.write_bytes(v1_bytes)
            after = await status.snapshot()
        finally:
            status.close()
        return _checksums(between), _checksums(after)

    try:
        between, after = asyncio.run(chains())
    finally:
        index.dispose()
    assert between == [v2]
    assert after == [v2, v1]
