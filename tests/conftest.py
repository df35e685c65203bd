"""Shared fixtures: real repositories made by the Debian ``ostree`` CLI (the oracle) and by lanshare."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lanshare.cli import main as lanshare_main
from lanshare.discovery.mdns_guard import GUARD_ENV, check_mdns_binding, guard_value
from tests import needs

pytest_plugins = ["tests.gpg_fixtures", "tests.postgres"]

# No test may speak mDNS on the machine's real interfaces.  Every process the suite starts inherits
# this, and lanshare's zeroconf start refuses to bind a real interface in the host's namespace.
os.environ.setdefault(GUARD_ENV, guard_value())

OSTREE = shutil.which("ostree")
requires_ostree = pytest.mark.needs("ostree")


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``needs`` marker."""
    config.addinivalue_line(
        "markers",
        "needs(*what): commands, 'root' or 'namespaces' the test needs; without them it is skipped, "
        "or fails under CI=true (tests/needs.py)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Check each test's ``needs`` marks before it runs."""
    for marker in item.iter_markers("needs"):
        for what in marker.args:
            needs.check(what)


def ostree(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the ostree CLI and return its completed process (text output)."""
    if OSTREE is None:
        pytest.fail("ostree CLI missing: .ci/run installs it (apt-get install ostree)")
    return subprocess.run([OSTREE, *map(str, args)], capture_output=True, text=True, check=check)


def lanshare(*args: str | Path) -> int:
    """Run the lanshare CLI in-process and return its exit code."""
    return lanshare_main([str(a) for a in args])


def build_tree(root: Path, seed: int = 0) -> Path:
    """A small tree with the shapes that matter: files, odd modes, symlinks, empty dirs, nesting."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir()
    (root / "etc" / "os-release").write_text(f"NAME=Test\nVERSION_ID={seed}\n")
    (root / "usr" / "bin").mkdir(parents=True)
    tool = root / "usr" / "bin" / "tool"
    tool.write_bytes(b"#!/bin/sh\necho tool\n" + bytes(range(256)) * (seed + 1))
    tool.chmod(0o755)
    secret = root / "etc" / "shadow"
    secret.write_text("root:*:19000::::::\n")
    secret.chmod(0o640)
    setuid = root / "usr" / "bin" / "su"
    setuid.write_bytes(b"\x7fELF" + os.urandom(1) * 0 + b"x" * 3000)
    setuid.chmod(0o4755)
    (root / "usr" / "lib").mkdir()
    (root / "usr" / "lib" / "big.bin").write_bytes(bytes((i * 7 + seed) % 251 for i in range(300_000)))
    (root / "usr" / "lib" / "empty-file").write_bytes(b"")
    (root / "var" / "empty-dir").mkdir(parents=True)
    (root / "var" / "sticky").mkdir()
    (root / "var" / "sticky").chmod(0o1777)
    (root / "bin").symlink_to("usr/bin")
    (root / "etc" / "dangling").symlink_to("/nonexistent/target")
    (root / "unicode-ñame.txt").write_text("ünïcødé\n")
    return root


@pytest.fixture
def tree_factory(tmp_path: Path) -> Callable[[int], Path]:
    """Build a fresh test tree for each seed."""

    def make(seed: int = 0) -> Path:
        return build_tree(tmp_path / f"tree-{seed}", seed)

    return make


@pytest.fixture
def ostree_repo(tmp_path: Path) -> Path:
    """An empty archive repository created by ``ostree init``."""
    path = tmp_path / "ostree-repo"
    ostree("init", f"--repo={path}", "--mode=archive")
    return path


def ostree_commit(repo: Path, branch: str, tree: Path, *extra: str) -> str:
    """Commit with the ostree CLI, as root-owned with no xattrs, and return the checksum."""
    out = ostree(
        "commit",
        f"--repo={repo}",
        f"--branch={branch}",
        "--owner-uid=0",
        "--owner-gid=0",
        "--no-xattrs",
        *extra,
        str(tree),
    )
    return out.stdout.strip()


@pytest.fixture(autouse=True)
def _no_mdns_on_real_interfaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test's own zeroconf instance in the host namespace may bind loopback only (see GUARD_ENV)."""
    import zeroconf

    original = zeroconf.Zeroconf.__init__

    def guarded(self: zeroconf.Zeroconf, *args: Any, **kwargs: Any) -> None:
        check_mdns_binding(kwargs.get("interfaces", args[0] if args else zeroconf.InterfaceChoice.All))
        original(self, *args, **kwargs)

    monkeypatch.setattr(zeroconf.Zeroconf, "__init__", guarded)
