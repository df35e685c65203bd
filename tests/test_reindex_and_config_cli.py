"""The index is derived from the repository; a bad configuration stops every command with exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lanshare.index.db import open_index
from lanshare.index.models import Commit, Pin, Ref
from tests.conftest import build_tree, lanshare


def _config(tmp_path: Path, repo: Path, extra: str = "") -> Path:
    path = tmp_path / "lanshare.toml"
    path.write_text(
        f'[repo]\npath = "{repo}"\n[database]\nurl = "sqlite:///{tmp_path}/index.sqlite"\n{extra}'
    )
    return path


def test_reindex_rebuilds_commits_refs_and_pins_from_the_repo_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    tree = build_tree(tmp_path / "tree")
    common: list[str | Path] = ["--repo", repo, "--tree", tree, "--no-xattrs"]
    assert lanshare("commit", "--branch", "os/stable", "--version", "1", *common) == 0
    assert lanshare("commit", "--branch", "os/stable", "--version", "2", "--checkpoint", *common) == 0
    assert lanshare("commit", "--branch", "os/stable", "--checkpoint-target", "os/v2", *common) == 0
    config = _config(tmp_path, repo)
    assert lanshare("pin", "--config", config, "os/stable", "--reason", "keep it") == 0

    # Lose the index entirely: the repository alone rebuilds it, pins included.
    for leftover in tmp_path.glob("index.sqlite*"):
        leftover.unlink()
    capsys.readouterr()
    assert lanshare("reindex", "--config", config, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"commits": 3, "refs": 2, "pins_restored": 1}
    engine = open_index(f"sqlite:///{tmp_path}/index.sqlite")
    with Session(engine) as session:
        commits = {c.version: c for c in session.scalars(select(Commit))}
        assert commits["2"].is_checkpoint and commits["2"].complete and commits["2"].ref == "os/stable"
        assert commits[None].checkpoint_target == "os/v2"
        assert commits["2"].parent == commits["1"].checksum
        assert {r.name for r in session.scalars(select(Ref))} == {"os/stable", "lanshare/pins/ref/os/stable"}
        [pin] = session.scalars(select(Pin))
        assert pin.ref_glob == "os/stable"
    engine.dispose()


@pytest.mark.parametrize(
    "command", [["prune"], ["reindex"], ["pin", "abc"], ["fsck"], ["path", "--from", "x"]]
)
def test_bad_config_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    config = _config(tmp_path, tmp_path / "repo", '[retention]\nmax_size = "-5GB"\n')
    assert lanshare(*command, "--config", config) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"{config}: retention.max_size: expected" in err


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert lanshare("prune", "--no-such-flag") == 2
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--branch", "--checkpoint-target", "--endoflife-rebase"])
def test_bad_ref_on_the_command_line_is_a_usage_error_and_creates_nothing(
    tmp_path: Path, option: str
) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    args: list[str | Path] = ["commit", "--repo", tmp_path / "new-repo", "--tree", tree]
    args += ["--branch", "../x"] if option == "--branch" else ["--branch", "ok", option, "../x"]
    assert lanshare(*args) == 2
    assert not (tmp_path / "new-repo").exists()


def test_a_file_name_that_is_not_utf8_fails_the_commit_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = build_tree(tmp_path / "tree")
    (tree / os.fsdecode(b"caf\xe9.txt")).write_text("latin-1 name")
    repo = tmp_path / "repo"
    assert lanshare("commit", "--repo", repo, "--branch", "os/stable", "--tree", tree) == 1
    err = capsys.readouterr().err
    assert "caf\\xe9.txt: the file name is not valid UTF-8" in err
    assert "Traceback" not in err
    assert not (repo / "refs/heads/os/stable").exists()
