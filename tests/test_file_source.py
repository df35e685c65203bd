"""``file:///…`` origins (a local mirror, a USB drive): pulled and verified like an HTTP origin.

The source repository is made by the ostree CLI, as a publisher's mirror would be.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lanshare.index.db import open_index
from lanshare.index.models import Commit, Lease, Transfer, TransferState
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from tests.conftest import build_tree, lanshare, ostree, ostree_commit
from tests.gpg_fixtures import GpgKeys
from tests.test_serve import _start, _stop


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory, gpg_keys: GpgKeys) -> tuple[Path, str]:
    """An archive repository on "the drive": os/stable, signed by the trusted key, with a summary."""
    base = tmp_path_factory.mktemp("drive")
    repo = base / "mirror"
    ostree("init", f"--repo={repo}", "--mode=archive")
    sign = (f"--gpg-sign={gpg_keys.trusted.key_id}", f"--gpg-homedir={gpg_keys.homedir}")
    commit = ostree_commit(repo, "os/stable", build_tree(base / "tree", 3), *sign)
    ostree("summary", "-u", f"--repo={repo}")
    return repo, commit


def _config(tmp_path: Path, keyring: Path, origin: str = "", database: str = "") -> Path:
    config = tmp_path / "lanshare.toml"
    database = database or f"sqlite:///{tmp_path / 'index.sqlite'}"
    config.write_text(
        f'[repo]\npath = "{tmp_path / "repo"}"\n'
        f'[database]\nurl = "{database}"\n'
        f'[trust]\ngpg_keyring = "{keyring}"\n'
        + (f'[origin]\nurl = "{origin}"\nrefs = ["os/stable"]\n' if origin else "")
    )
    return config


def test_pull_from_a_file_url_verifies_and_stores_a_whole_commit(
    tmp_path: Path,
    mirror: tuple[Path, str],
    gpg_keys: GpgKeys,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # On both index backends: the pull records its lease, transfer and commits there.
    source, commit = mirror
    config = _config(tmp_path, gpg_keys.trusted.keyring, database=database_url)
    assert lanshare("pull", "os/stable", "--from", source.as_uri(), "--config", config, "--json") == 0
    assert json.loads(capsys.readouterr().out)["commit"] == commit
    assert Repo.open(tmp_path / "repo").read_ref("os/stable") == commit
    # What lanshare stored is whole by the oracle's standard too.
    ostree("fsck", f"--repo={tmp_path / 'repo'}")
    engine = open_index(database_url)
    try:
        with Session(engine) as session:
            assert session.get_one(Commit, commit).complete
            assert session.scalars(select(Transfer.state)).all() == [TransferState.DONE]
            assert session.scalars(select(Lease)).all() == []
    finally:
        engine.dispose()


def test_origin_file_url_in_the_config_is_followed(
    tmp_path: Path, mirror: tuple[Path, str], gpg_keys: GpgKeys
) -> None:
    source, commit = mirror
    config = _config(tmp_path, gpg_keys.trusted.keyring, origin=source.as_uri())
    assert lanshare("pull", "os/stable", "--config", config) == 0
    assert Repo.open(tmp_path / "repo").read_ref("os/stable") == commit


def test_the_daemon_polls_a_file_origin(tmp_path: Path, mirror: tuple[Path, str], gpg_keys: GpgKeys) -> None:
    source, commit = mirror
    extra = (
        f'[trust]\ngpg_keyring = "{gpg_keys.trusted.keyring}"\n'
        f'[origin]\nurl = "{source.as_uri()}"\nrefs = ["os/stable"]\n'
    )
    daemon = _start(tmp_path, tmp_path / "repo", extra)
    try:
        ref = tmp_path / "repo" / "refs" / "heads" / "os" / "stable"
        deadline = time.monotonic() + 60
        while not ref.exists() and time.monotonic() < deadline and daemon.proc.poll() is None:
            time.sleep(0.1)
    finally:
        assert _stop(daemon) == 0
    log = daemon.log.read_text()
    assert ref.exists() and ref.read_text().strip() == commit, log
    assert "Traceback" not in log


def _damage(repo: Path, suffix: str) -> Path:
    """Flip a bit in the biggest object with ``suffix``; returns its path."""
    path = max((repo / "objects").glob(f"*/*.{suffix}"), key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("suffix", ["filez", "dirtree", "commit"])
def test_corrupt_objects_on_the_drive_are_rejected(
    tmp_path: Path,
    mirror: tuple[Path, str],
    gpg_keys: GpgKeys,
    suffix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "drive"
    shutil.copytree(mirror[0], source, symlinks=True)
    damaged = _damage(source, suffix)
    checksum = damaged.parent.name + damaged.name.split(".")[0]
    config = _config(tmp_path, gpg_keys.trusted.keyring)
    assert lanshare("pull", "os/stable", "--from", source.as_uri(), "--config", config) == 1
    assert "corrupt" in capsys.readouterr().err.lower()
    repo = Repo.open(tmp_path / "repo")
    assert repo.read_ref("os/stable") is None
    assert not repo.has_object(checksum, ObjectType(suffix))


def test_unsigned_commits_on_the_drive_are_refused(
    tmp_path: Path, gpg_keys: GpgKeys, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "drive"
    ostree("init", f"--repo={source}", "--mode=archive")
    ostree_commit(source, "os/stable", build_tree(tmp_path / "tree"))
    config = _config(tmp_path, gpg_keys.trusted.keyring)
    assert lanshare("pull", "os/stable", "--from", source.as_uri(), "--config", config) == 1
    assert "sign" in capsys.readouterr().err
    assert Repo.open(tmp_path / "repo").read_ref("os/stable") is None


def test_a_drive_that_is_not_mounted_is_one_clear_line(
    tmp_path: Path, gpg_keys: GpgKeys, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "media" / "usb").mkdir(parents=True)
    config = _config(tmp_path, gpg_keys.trusted.keyring)
    url = (tmp_path / "media" / "usb").as_uri()
    assert lanshare("pull", "os/stable", "--from", url, "--config", config) == 1
    err = capsys.readouterr().err
    assert "not an OSTree repository" in err and "Traceback" not in err


def test_a_drives_signed_summary_is_carried_through_byte_for_byte(
    tmp_path: Path, mirror: tuple[Path, str], gpg_keys: GpgKeys
) -> None:
    # A publisher's mirror on a drive signs its summary: the cache serves that very summary and
    # signature (it holds every ref listed), so a client verifying summaries accepts it.
    drive = tmp_path / "drive"
    shutil.copytree(mirror[0], drive, symlinks=True)
    sign = (f"--gpg-sign={gpg_keys.trusted.key_id}", f"--gpg-homedir={gpg_keys.homedir}")
    ostree("summary", "-u", f"--repo={drive}", *sign)
    config = _config(tmp_path, gpg_keys.trusted.keyring)
    assert lanshare("pull", "os/stable", "--from", drive.as_uri(), "--config", config) == 0
    cache = tmp_path / "repo"
    for name in ("summary", "summary.sig"):
        assert (cache / name).read_bytes() == (drive / name).read_bytes(), name
