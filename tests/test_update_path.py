"""The update path (DESIGN §3), computed over real commits in a real archive repository."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lanshare.gvariant import Variant
from lanshare.ostree.commit_tree import CommitOptions, commit_tree
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.update_path import PathError, RepoGraph, compute_path
from tests.conftest import lanshare, ostree_commit


class History:
    """Publishes commits with checkpoint metadata into one repository, one per call."""

    def __init__(self, tmp_path: Path) -> None:
        self.repo = Repo.init(tmp_path / "repo")
        self.tree = tmp_path / "tree"
        self.tree.mkdir()
        self.clock = 1_700_000_000
        self.by_version: dict[str, str] = {}

    def commit(self, ref: str, version: str, *, new_ref: bool = False, **meta: object) -> str:
        """Commit a tiny tree on ``ref``; keyword metadata: checkpoint=True, target='ref', eol='ref'."""
        (self.tree / "version").write_text(version)
        metadata: dict[str, Variant] = {"version": Variant("s", version)}
        if meta.get("checkpoint"):
            metadata["lanshare.checkpoint"] = Variant("b", True)
        if "target" in meta:
            metadata["eos.checkpoint-target"] = Variant("s", str(meta["target"]))
        if "eol" in meta:
            metadata["ostree.endoflife-rebase"] = Variant("s", str(meta["eol"]))
        self.clock += 3600
        options = CommitOptions(
            branch=ref,
            parent="none" if new_ref else None,
            timestamp=self.clock,
            metadata=metadata,
            owner_uid=0,
            owner_gid=0,
            xattrs=False,
        )
        checksum, _ = commit_tree(self.repo, self.tree, options)
        self.repo.write_ref(ref, checksum)
        self.by_version[version] = checksum
        return checksum

    def path(self, start_version: str, ref: str | None = None) -> list[tuple[str | None, str]]:
        """(version, ref) of each step from ``start_version``."""
        result = compute_path(RepoGraph(self.repo), self.by_version[start_version], ref)
        return [(step.version, step.ref) for step in result.steps]


@pytest.fixture
def history(tmp_path: Path) -> History:
    return History(tmp_path)


def test_plain_head(history: History) -> None:
    for v in ("1", "2", "3"):
        history.commit("os/stable", v)
    assert history.path("1") == [("3", "os/stable")]
    assert history.path("3") == []


def test_mandatory_checkpoints_are_each_a_step(history: History) -> None:
    history.commit("os/stable", "1")
    history.commit("os/stable", "2", checkpoint=True)
    history.commit("os/stable", "3")
    history.commit("os/stable", "4", checkpoint=True)
    history.commit("os/stable", "5")
    history.commit("os/stable", "6")
    assert history.path("1") == [("2", "os/stable"), ("4", "os/stable"), ("6", "os/stable")]


def test_machine_already_past_a_checkpoint(history: History) -> None:
    history.commit("os/stable", "1")
    history.commit("os/stable", "2", checkpoint=True)
    history.commit("os/stable", "3")
    history.commit("os/stable", "4")
    assert history.path("3") == [("4", "os/stable")]
    assert history.path("2") == [("4", "os/stable")]


def test_rename_chain_across_three_refs(history: History) -> None:
    history.commit("os/stable", "1")
    history.commit("os/stable", "2", target="os/stable-v2")
    history.commit("os/stable-v2", "3", new_ref=True)
    history.commit("os/stable-v2", "4", checkpoint=True)
    history.commit("os/stable-v2", "5", target="os/stable-v3")
    history.commit("os/stable-v3", "6", new_ref=True)
    history.commit("os/stable-v3", "7")
    assert history.path("1") == [
        ("2", "os/stable"),
        ("4", "os/stable-v2"),
        ("5", "os/stable-v2"),
        ("7", "os/stable-v3"),
    ]


def test_emergency_fix_on_the_old_ref_is_taken_before_the_switch(history: History) -> None:
    history.commit("os/stable", "1")
    history.commit("os/stable", "2", target="os/stable-v2")
    history.commit("os/stable-v2", "3", new_ref=True)
    history.commit("os/stable", "2.1")  # published after the rename, on the old ref
    assert history.path("1") == [("2", "os/stable"), ("2.1", "os/stable"), ("3", "os/stable-v2")]
    # A machine that already deployed the switch commit takes the fix, then switches.
    assert history.path("2") == [("2.1", "os/stable"), ("3", "os/stable-v2")]


def test_endoflife_rebase_switches_refs(history: History) -> None:
    history.commit("os/stable", "1")
    history.commit("os/stable", "2", eol="os/next")
    history.commit("os/next", "3", new_ref=True)
    assert history.path("1") == [("2", "os/stable"), ("3", "os/next")]


def test_branched_target_ref_does_not_step_back_into_shared_history(history: History) -> None:
    history.commit("os/stable", "1")
    v2 = history.commit("os/stable", "2", target="os/stable-v2")
    # os/stable-v2 branches off the switch commit itself, as `ostree commit --parent` would.
    history.repo.write_ref("os/stable-v2", v2)
    history.commit("os/stable-v2", "3")
    assert history.path("1") == [("2", "os/stable"), ("3", "os/stable-v2")]


def test_cycle_is_detected_and_stops(history: History) -> None:
    history.commit("os/a", "1")
    history.commit("os/a", "2", target="os/b")
    history.commit("os/b", "3", new_ref=True, target="os/a")
    result = compute_path(RepoGraph(history.repo), history.by_version["1"])
    assert [s.version for s in result.steps] == ["2", "3"]
    assert any("cycle" in note and "os/a → os/b → os/a" in note for note in result.notes)


def test_missing_intermediate_commit_is_named(history: History) -> None:
    history.commit("os/stable", "1")
    history.commit("os/stable", "2")
    v3 = history.commit("os/stable", "3")
    history.commit("os/stable", "4")
    history.repo.object_path(v3, ObjectType.COMMIT).unlink()
    with pytest.raises(PathError) as error:
        compute_path(RepoGraph(history.repo), history.by_version["1"], "os/stable")
    assert error.value.missing == [v3]
    assert v3 in str(error.value)


def test_from_commit_not_on_the_ref(history: History) -> None:
    history.commit("os/stable", "1")
    other = history.commit("os/other", "x", new_ref=True)
    history.commit("os/stable", "2")
    with pytest.raises(PathError, match=f"commit {other} is not on os/stable"):
        compute_path(RepoGraph(history.repo), other, "os/stable")


def test_no_downgrade_to_an_older_target_ref(history: History) -> None:
    history.commit("os/old", "1", new_ref=True)
    history.commit("os/stable", "2", new_ref=True)
    history.commit("os/stable", "3", target="os/old")
    result = compute_path(RepoGraph(history.repo), history.by_version["2"])
    assert [s.version for s in result.steps] == ["3"]
    assert any("no downgrade" in note for note in result.notes)


def test_ref_defaults_to_the_commit_binding(history: History) -> None:
    history.commit("os/stable", "1")
    history.commit("os/stable", "2")
    assert history.path("1", ref=None) == [("2", "os/stable")]


def test_path_over_commits_made_by_ostree(tmp_path: Path, ostree_repo: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    versions = {}
    for version, extra in (("1", []), ("2", ["--add-metadata-string=eos.checkpoint-target=os/v2"])):
        (tree / "v").write_text(version)
        versions[version] = ostree_commit(
            ostree_repo, "os/v1", tree, f"--add-metadata-string=version={version}", *extra
        )
    (tree / "v").write_text("3")
    versions["3"] = ostree_commit(ostree_repo, "os/v2", tree, "--add-metadata-string=version=3")
    result = compute_path(RepoGraph(Repo.open(ostree_repo)), versions["1"])
    assert [(s.version, s.ref) for s in result.steps] == [("2", "os/v1"), ("3", "os/v2")]


def test_cli_prints_steps_and_exits_1_with_missing_commits(
    history: History, capsys: pytest.CaptureFixture[str]
) -> None:
    history.commit("os/stable", "1")
    v2 = history.commit("os/stable", "2", checkpoint=True)
    history.commit("os/stable", "3")
    repo = history.repo.path
    assert lanshare("path", "--repo", repo, "--from", history.by_version["1"], "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["version"] for s in data["steps"]] == ["2", "3"]
    assert data["steps"][0]["reason"] == "checkpoint"

    assert lanshare("path", "--repo", repo, "--from", history.by_version["1"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint" in out and "head of os/stable" in out

    history.repo.object_path(v2, ObjectType.COMMIT).unlink()
    assert lanshare("path", "--repo", repo, "--from", history.by_version["1"]) == 1
    err = capsys.readouterr().err
    assert f"missing: {v2}" in err
