"""Regenerating a repository's summary: stock ostree reads it, and it equals ostree's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lanshare.ostree.repo import Repo
from lanshare.ostree.repo_summary import regenerate_summary
from lanshare.ostree.summary import parse_summary
from tests.conftest import build_tree, lanshare, ostree, ostree_commit
from tests.gpg_fixtures import GpgKeys


def test_same_bytes_as_ostree_summary_update(tmp_path: Path, ostree_repo: Path) -> None:
    tree = build_tree(tmp_path / "tree")
    ostree_commit(ostree_repo, "os/stable", tree, "--add-metadata-string=version=1.0")
    ostree_commit(ostree_repo, "os/next", tree)
    ostree("summary", f"--repo={ostree_repo}", "-u")
    theirs = (ostree_repo / "summary").read_bytes()
    ours = regenerate_summary(Repo.open(ostree_repo), last_modified=parse_summary(theirs).last_modified)
    assert ours == theirs


def test_ostree_reads_lanshare_summary_with_collection_and_mirrors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo_path = tmp_path / "repo"
    tree = build_tree(tmp_path / "tree")
    args: list[str | Path] = [
        "--repo",
        repo_path,
        "--tree",
        tree,
        "--collection-id",
        "org.example.Os",
        "--version",
        "7",
    ]
    assert lanshare("commit", "--branch", "os/stable", *args) == 0
    repo = Repo.open(repo_path)
    head = repo.read_ref("os/stable")
    assert head is not None
    repo.write_ref("os/stable", head, collection_id="org.example.Other")
    repo.write_ref("lanshare/pins/commit/" + head, head)  # local bookkeeping, never advertised
    capsys.readouterr()

    assert lanshare("summary", "--repo", repo_path, "-u", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["collection_id"] == "org.example.Os"
    assert [(r["ref"], r["version"]) for r in listed["refs"]] == [("os/stable", "7")]
    assert listed["collection_map"]["org.example.Other"][0]["commit"] == head

    view = ostree("summary", f"--repo={repo_path}", "--view").stdout
    assert "(org.example.Os, os/stable)" in view and "(org.example.Other, os/stable)" in view
    assert head in view and "lanshare/pins" not in view


def test_signed_summary_is_accepted_by_ostree_pull(tmp_path: Path, gpg_keys: GpgKeys) -> None:
    repo_path = tmp_path / "repo"
    key: list[str | Path] = ["--gpg-sign", gpg_keys.trusted.key_id, "--gpg-homedir", gpg_keys.homedir]
    tree = build_tree(tmp_path / "tree")
    assert lanshare("commit", "--repo", repo_path, "--branch", "os/stable", "--tree", tree, *key) == 0
    assert lanshare("summary", "--repo", repo_path, "-u", *key) == 0
    client = tmp_path / "client"
    ostree("init", f"--repo={client}", "--mode=archive")
    ostree(
        "remote",
        "add",
        f"--repo={client}",
        f"--gpg-import={gpg_keys.trusted.keyring}",
        "--set=gpg-verify-summary=true",
        "origin",
        f"file://{repo_path}",
    )
    assert "os/stable" in ostree("remote", "refs", f"--repo={client}", "origin").stdout
    ostree("pull", f"--repo={client}", "origin", "os/stable")
    # Unsigned regeneration removes the stale signature instead of leaving a mismatched pair.
    assert lanshare("summary", "--repo", repo_path, "-u") == 0
    assert not (repo_path / "summary.sig").exists()
