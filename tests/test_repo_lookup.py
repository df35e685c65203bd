"""Repo.absent: which of many objects a repository lacks, answered by listing directories."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from tests.conftest import build_tree, lanshare


def test_absent_agrees_with_a_stat_per_object(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    assert lanshare("commit", "--repo", repo_path, "--branch", "b", "--tree", build_tree(tmp_path / "t")) == 0
    repo = Repo.open(repo_path)
    held = [(c, k) for c, k, _ in repo.iter_objects()]
    rng = random.Random(7)
    # Unknown checksums: some beside held objects (same objects/XX), most in directories not made yet.
    unknown = [(hashlib.sha256(str(i).encode()).hexdigest(), ObjectType.FILE) for i in range(300)]
    near = [(held[i][0][:2] + "0" * 62, ObjectType.DIR_TREE) for i in range(0, len(held), 3)]
    # A held checksum asked with another type is absent too.
    wrong_type = [(c, ObjectType.DIR_META if k is ObjectType.FILE else ObjectType.FILE) for c, k in held[:20]]
    asked = held + unknown + near + wrong_type
    rng.shuffle(asked)
    expected = [i for i, (c, k) in enumerate(asked) if not repo.has_object(c, k)]
    assert repo.absent(asked) == expected
    assert len(expected) == len(asked) - len(held)
    assert repo.absent([]) == []
    assert repo.absent(held[:1]) == []  # a lone object in its directory: a stat


def test_absent_refuses_what_is_not_a_checksum(tmp_path: Path) -> None:
    repo = Repo.init(tmp_path / "repo")
    with pytest.raises(ValueError, match="not a checksum"):
        repo.absent([("../../etc/passwd", ObjectType.FILE)])
