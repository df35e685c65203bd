"""``lanshare commit`` into a repository a daemon serves: the summary follows without a pull."""

from __future__ import annotations

import time
from pathlib import Path

from lanshare.ostree.repo import Repo
from lanshare.ostree.summary import parse_summary
from tests.conftest import build_tree, lanshare, ostree
from tests.test_serve import _start, _stop


def _summary_refs(repo: Path) -> dict[str, str]:
    try:
        return {r.name: r.checksum for r in parse_summary((repo / "summary").read_bytes()).refs}
    except FileNotFoundError:
        return {}


def test_a_commit_into_a_served_repo_refreshes_the_summary(tmp_path: Path) -> None:
    served = tmp_path / "served"
    args = ("--repo", served, "--tree", build_tree(tmp_path / "t1", 1), "--no-xattrs")
    assert lanshare("commit", "--branch", "os/stable", *args) == 0
    daemon = _start(tmp_path, served)
    try:
        assert set(_summary_refs(served)) == {"os/stable"}  # written when the daemon opened the repo
        # The publisher commits a new ref into the repository the daemon serves.
        assert lanshare("commit", "--branch", "os/beta", *args) == 0
        beta = Repo.open(served).read_ref("os/beta")
        deadline = time.monotonic() + 60
        while _summary_refs(served).get("os/beta") != beta:
            assert time.monotonic() < deadline, daemon.log.read_text()
            time.sleep(0.2)
        # A stock client that reads the summary now finds the new ref.
        client = tmp_path / "client"
        ostree("init", f"--repo={client}", "--mode=archive")
        ostree("remote", "add", f"--repo={client}", "--no-gpg-verify", "lan", daemon.url)
        assert "os/beta" in ostree("remote", "refs", f"--repo={client}", "lan").stdout
        ostree("pull", f"--repo={client}", "lan", "os/beta")
        assert ostree("rev-parse", f"--repo={client}", "lan:os/beta").stdout.strip() == beta
    finally:
        assert _stop(daemon) == 0
    assert "summary regenerated: refs changed on disk" in daemon.log.read_text()
