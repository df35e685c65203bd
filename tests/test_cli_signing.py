"""Signing at commit time and signature checks in fsck, against stock ostree's verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lanshare.ostree import signing
from tests.conftest import build_tree, lanshare, ostree, ostree_commit
from tests.gpg_fixtures import GpgKeys


def _client_pull(tmp_path: Path, server: Path, keyring: Path, ref: str) -> tuple[int, str]:
    client = tmp_path / "client"
    ostree("init", f"--repo={client}", "--mode=archive")
    ostree("remote", "add", f"--repo={client}", f"--gpg-import={keyring}", "origin", f"file://{server}")
    result = ostree("pull", f"--repo={client}", "origin", ref, check=False)
    return result.returncode, result.stderr


def test_gpg_signed_by_lanshare_is_pulled_by_ostree_with_gpg_verify(
    tmp_path: Path, gpg_keys: GpgKeys, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    tree = build_tree(tmp_path / "tree")
    key = gpg_keys.trusted
    assert (
        lanshare(
            "commit",
            "--repo",
            repo,
            "--branch",
            "os/stable",
            "--tree",
            tree,
            "--gpg-sign",
            key.key_id,
            "--gpg-homedir",
            gpg_keys.homedir,
            "--checkpoint",
        )
        == 0
    )
    code, err = _client_pull(tmp_path, repo, key.keyring, "os/stable")
    assert code == 0, err
    assert lanshare("fsck", "--repo", repo, "--gpg-keyring", key.keyring) == 0

    # The same repository checked against another publisher's key: every commit is named.
    capsys.readouterr()
    assert lanshare("fsck", "--repo", repo, "--gpg-keyring", gpg_keys.other.keyring, "--json") == 1
    report = json.loads(capsys.readouterr().out)
    [problem] = report["problems"]
    assert problem["kind"] == "signature" and key.key_id[-8:] in problem["message"]


def test_stock_ostree_rejects_a_commit_signed_with_an_untrusted_key(
    tmp_path: Path, gpg_keys: GpgKeys
) -> None:
    repo = tmp_path / "repo"
    tree = build_tree(tmp_path / "tree")
    args: list[str | Path] = ["--gpg-sign", gpg_keys.other.key_id, "--gpg-homedir", gpg_keys.homedir]
    assert lanshare("commit", "--repo", repo, "--branch", "os/stable", "--tree", tree, *args) == 0
    code, err = _client_pull(tmp_path, repo, gpg_keys.trusted.keyring, "os/stable")
    assert code != 0 and "public key not found" in err and gpg_keys.other.key_id in err


def test_commit_signed_by_ostree_verifies_in_lanshare_fsck(
    tmp_path: Path, ostree_repo: Path, gpg_keys: GpgKeys
) -> None:
    tree = build_tree(tmp_path / "tree")
    ostree_commit(
        ostree_repo,
        "os/stable",
        tree,
        f"--gpg-sign={gpg_keys.trusted.key_id}",
        f"--gpg-homedir={gpg_keys.homedir}",
    )
    assert lanshare("fsck", "--repo", ostree_repo, "--gpg-keyring", gpg_keys.trusted.keyring) == 0
    assert lanshare("fsck", "--repo", ostree_repo, "--gpg-keyring", gpg_keys.other.keyring) == 1


def test_ed25519_signed_commit_checks_with_the_right_public_key_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    public, secret = signing.generate_ed25519_keypair()
    other_public, _ = signing.generate_ed25519_keypair()
    keyfile = tmp_path / "secret.key"
    keyfile.write_text(secret + "\n")
    repo = tmp_path / "repo"
    tree = build_tree(tmp_path / "tree")
    assert (
        lanshare("commit", "--repo", repo, "--branch", "os/stable", "--tree", tree, "--sign-ed25519", keyfile)
        == 0
    )
    # Stock ostree keeps our detached metadata intact (its own ed25519 is not built in Debian).
    assert "no errors found" in ostree("fsck", f"--repo={repo}").stdout
    assert lanshare("fsck", "--repo", repo, "--ed25519-key", public) == 0
    assert lanshare("fsck", "--repo", repo, "--ed25519-key", other_public) == 1
    assert "no valid signature" in capsys.readouterr().out


def test_unsigned_commit_fails_fsck_when_keys_are_configured(tmp_path: Path) -> None:
    public, _ = signing.generate_ed25519_keypair()
    repo = tmp_path / "repo"
    assert lanshare("commit", "--repo", repo, "--branch", "x", "--tree", build_tree(tmp_path / "t")) == 0
    assert lanshare("fsck", "--repo", repo) == 0
    assert lanshare("fsck", "--repo", repo, "--ed25519-key", public) == 1
