"""Throwaway GnuPG keys for signature tests: one session-wide homedir holding a trusted and an untrusted key.

Registered for every test module by ``tests/conftest.py``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lanshare.ostree.signing import export_public_keyring
from tests.needs import need_tool

GPG = shutil.which("gpg")


@dataclass(frozen=True)
class GpgKey:
    """One generated key: its long key id, fingerprint and a keyring file holding only its public key."""

    key_id: str
    fingerprint: str
    keyring: Path


@dataclass(frozen=True)
class GpgKeys:
    """The session's GnuPG home directory and its two keys."""

    homedir: Path
    trusted: GpgKey
    other: GpgKey


def _gpg(homedir: Path, *args: str) -> str:
    assert GPG is not None
    proc = subprocess.run([GPG, "--homedir", str(homedir), "--batch", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _generate(homedir: Path, uid: str, keyring: Path) -> GpgKey:
    _gpg(homedir, "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
    listing = _gpg(homedir, "--with-colons", "--list-keys", uid)
    key_id = next(line.split(":")[4] for line in listing.splitlines() if line.startswith("pub:"))
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    export_public_keyring(homedir, [key_id], keyring)
    return GpgKey(key_id, fingerprint, keyring)


@pytest.fixture(scope="session")
def gpg_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgKeys]:
    """Two fresh ed25519 signing keys; the gpg-agent they start is killed at the end of the session."""
    need_tool("gpg")
    need_tool("gpgv")
    base = tmp_path_factory.mktemp("gpg")
    homedir = base / "home"
    homedir.mkdir(mode=0o700)
    try:
        trusted = _generate(homedir, "Trusted Publisher <trusted@example.com>", base / "trusted.gpg")
        other = _generate(homedir, "Someone Else <other@example.com>", base / "other.gpg")
        yield GpgKeys(homedir, trusted, other)
    finally:
        gpgconf = shutil.which("gpgconf")
        if gpgconf is not None:
            subprocess.run([gpgconf, "--homedir", str(homedir), "--kill", "all"], capture_output=True)
