"""``python3 -m lanshare.demo``: the README's main-job command shows a LAN walking the checkpoint chain.

The demo is run exactly as a person runs it (a subprocess, as root); what it claims is checked
against what it left in its output directory: the update path is computed afresh from the
publisher's repository, and B's deploy hook must have deployed exactly its steps.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lanshare import demo
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.update_path import RepoGraph, compute_path
from tests.conftest import ostree
from tests.netns import require_namespaces

SOURCE_ROOT = Path(__file__).resolve().parent.parent


def first_commit(repo: Repo, ref: str) -> str:
    """The root of ``ref``'s history: the v1 every demo machine starts from."""
    graph = RepoGraph(repo)
    commit = graph.head(ref)
    assert commit is not None, ref
    while (info := graph.info(commit)) is not None and info.parent is not None:
        commit = info.parent
    return commit


@pytest.mark.slow
def test_demo_lan_walks_b_through_every_step_of_the_chain(tmp_path: Path) -> None:
    require_namespaces()
    out = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "lanshare.demo", str(out)],
        cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no demo LAN" not in done.stdout  # the LAN demo ran, not the fallback

    origin = Repo.open(out / "origin")
    v1 = first_commit(origin, "os/stable")
    path = compute_path(RepoGraph(origin), v1, "os/stable")
    expected = [step.commit for step in path.steps]
    assert [step.version for step in path.steps] == ["2", "4", "5"]

    # B's hook deployed v2, v4, v5 in that order, one per `lanshare upgrade` run, and B now runs v5.
    lines = (out / "b" / "deployed.log").read_text().splitlines()
    assert [line.split()[0] for line in lines] == expected
    assert (out / "b" / "deployed-commit").read_text().strip() == expected[-1]
    for step in path.steps:
        assert f"deployed v{step.version} ({step.ref}, {step.commit[:16]})" in done.stdout
    assert done.stdout.count("exit 10 in") == 2 and "exit 0 in" in done.stdout

    # B and C got the chain from the LAN alone (they have no origin): every step is held in full.
    for host in ("b", "c"):
        repo = Repo.open(out / host / "repo")
        for commit in expected:
            assert repo.has_object(commit, ObjectType.COMMIT) and not repo.is_partial(commit), (host, commit)
    for host in ("b", "c"):
        config = (out / host / "lanshare.toml").read_text()
        assert "[origin]" not in config and "peers" not in config, config

    # Every repository passed lanshare fsck, and stock ostree agrees about B's.
    for name in ("origin", "A", "B", "C"):
        assert f"lanshare fsck {name}: ok" in done.stdout
    assert "no errors found" in ostree("fsck", f"--repo={out / 'b' / 'repo'}").stdout

    # C deployed the same path into its OSTree sysroot with deploy = "ostree-admin": libostree agrees.
    first = ostree("admin", "status", f"--sysroot={out / 'c' / 'sysroot'}").stdout.splitlines()[:3]
    assert (
        first[0].split()[1] == f"{expected[-1]}.0"
        and first[2].strip() == "origin refspec: origin:os/stable-v2"
    )

    # B's status page was saved and shows where B is.
    page = (out / "b-status.html").read_text()
    assert expected[-1][:12] in page and "os/stable-v2" in page
    assert "namespaces deleted" in done.stdout


def test_demo_without_a_lan_publishes_and_shows_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo.single_machine_demo(tmp_path, demo.Narrator())
    printed = capsys.readouterr().out
    assert "lanshare fsck: " in printed and ", 0 problems" in printed
    repo = Repo.open(tmp_path / "repo")
    v1 = first_commit(repo, "os/stable")
    shown = printed.split("lanshare path --from v1 (exit 0):")[1]
    steps = compute_path(RepoGraph(repo), v1, "os/stable").steps
    assert [step.version for step in steps] == ["2", "4", "5"]
    for number, step in enumerate(steps, 1):
        assert f"{number}. {step.commit[:12]}  {step.ref}" in shown


def test_demo_refuses_a_directory_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("keep me\n")
    done = subprocess.run(
        [sys.executable, "-m", "lanshare.demo", str(tmp_path)],
        cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "is not empty" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]
