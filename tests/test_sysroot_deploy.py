"""``[upgrade] deploy = "ostree-admin"`` driving a real OSTree sysroot, with libostree as the oracle.

The sysroot is made as libostree's own tests make one (``ostree admin init-fs``, ``os-init``, trees
with a kernel and an initramfs, ``ostree admin deploy --karg=…``).  A booted machine is simulated
as ``../shared/TESTING.md`` describes: a private mount and PID namespace, the deployment's root with
the physical sysroot bound at ``sysroot/`` and ``boot/``, a tmpfs ``/run`` holding ``ostree-booted``,
then ``chroot``; ``lanshare upgrade`` runs inside it.  A "reboot" boots the pending deployment next.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import lanshare
from lanshare.commands import status as status_command
from lanshare.config import load_config
from lanshare.deploy.reboot import parse_reboot
from lanshare.status import model, page
from lanshare.upgrade import parse_deployed
from tests.conftest import ostree
from tests.gpg_fixtures import GpgKeys
from tests.test_upgrade import _commit, serve_repo

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ostree") is None or shutil.which("unshare") is None,
    reason="needs root, the ostree CLI and unshare",
)

OSNAME = "os"
# The simulated machine runs this Python and lanshare's source tree: their top directories are
# bound into it too (the trees have mount points for them).
HOST_DIRS = sorted(
    {"/usr", "/tmp", "/dev"}
    | {"/" + Path(p).resolve().parts[1] for p in (lanshare.__file__, sys.prefix, sys.base_prefix)}
)
BOOT = """
set -e
sysroot=$1 root=$2; shift 2
mount --make-rprivate /
mount --bind "$sysroot" "$root/sysroot"
mount --bind "$sysroot/boot" "$root/boot"
for dir in $HOST_DIRS; do mount --bind "$dir" "$root$dir"; done
mount -t proc proc "$root/proc"
mount -t tmpfs tmpfs "$root/run"
touch "$root/run/ostree-booted"
exec chroot "$root" "$@"
"""


def os_tree(root: Path, version: int) -> Path:
    """A tree ``ostree admin deploy`` accepts: a kernel, an initramfs, ``usr/etc``, the usual top level."""
    modules = root / "usr" / "lib" / "modules" / "6.1.0"
    modules.mkdir(parents=True)
    (modules / "vmlinuz").write_text(f"kernel {version}\n")
    (modules / "initramfs.img").write_text("initramfs\n")
    (root / "usr" / "lib" / "os-release").write_text(f'ID=test\nPRETTY_NAME="Test OS {version}"\n')
    (root / "usr" / "etc").mkdir()
    (root / "usr" / "etc" / "hostname").write_text("machine\n")
    for name in ("bin", "sbin", "lib64"):
        (root / "usr" / name).mkdir(exist_ok=True)
        (root / name).symlink_to(f"usr/{name}")
    (root / "lib").symlink_to("usr/lib")
    for name in ("sysroot", "boot", "dev", "proc", "run", "sys", "tmp", "var", *(d[1:] for d in HOST_DIRS)):
        (root / name).mkdir(exist_ok=True)
    (root / "ostree").symlink_to("sysroot/ostree")
    return root


@dataclass(frozen=True)
class Chain:
    """The origin: v1 → v2 (checkpoint) → v3 → v4 (continue on os/stable-v2) → v5 on os/stable-v2."""

    repo: Path
    url: str
    keyring: Path
    v: dict[int, str]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, gpg_keys: GpgKeys) -> Iterator[Chain]:
    base = tmp_path_factory.mktemp("os-origin")
    repo = base / "repo"
    sign = ("--gpg-sign", gpg_keys.trusted.key_id, "--gpg-homedir", str(gpg_keys.homedir))
    v = {1: _commit(repo, os_tree(base / "t1", 1), 1, "os/stable", sign)}
    v[2] = _commit(repo, os_tree(base / "t2", 2), 2, "os/stable", sign, "--checkpoint")
    v[3] = _commit(repo, os_tree(base / "t3", 3), 3, "os/stable", sign)
    v[4] = _commit(repo, os_tree(base / "t4", 4), 4, "os/stable", sign, "--checkpoint-target", "os/stable-v2")
    v[5] = _commit(
        repo, os_tree(base / "t5", 5), 5, "os/stable-v2", sign,
        "--parent", "none", "--checkpoint-source", f"os/stable@{v[4]}",
    )  # fmt: skip
    with serve_repo(repo) as url:
        yield Chain(repo, url, gpg_keys.trusted.keyring, v)


@dataclass
class Machine:
    """A sysroot with v1 deployed, lanshare's cache and configuration, and a reboot recorder."""

    base: Path
    sysroot: Path
    config: Path
    chain: Chain

    def status(self) -> list[tuple[str, str, str | None]]:
        """The oracle: ``ostree admin status`` as (mark and flags, version, origin refspec) rows."""
        return _rows(ostree("admin", "status", f"--sysroot={self.sysroot}").stdout)

    def deployment(self, version: int) -> Path:
        deploy = self.sysroot / "ostree" / "deploy" / OSNAME / "deploy"
        found = [p for p in deploy.glob(f"{self.chain.v[version]}.*") if p.suffix != ".origin"]
        assert len(found) == 1, found
        return found[0]

    def booted_status(self, booted: int) -> list[tuple[str, str, str | None]]:
        return _rows(self.boot(booted, "ostree", "admin", "status").stdout)

    def boot(self, version: int, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on the machine booted into deployment ``version``."""
        args = [str(self.sysroot), str(self.deployment(version)), *argv]
        return subprocess.run(
            ["unshare", "-m", "-p", "-f", "sh", "-c", BOOT, "boot", *args],
            capture_output=True, text=True, timeout=300, env={**os.environ, "HOST_DIRS": " ".join(HOST_DIRS)},
        )  # fmt: skip

    def upgrade(self, booted: int | None, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "lanshare.cli", "upgrade", "--config", str(self.config), *args]
        if booted is None:
            return subprocess.run(argv, capture_output=True, text=True, timeout=300)
        return self.boot(booted, *argv)

    def set_reboot(self, policy: str) -> None:
        text = self.config.read_text().split("reboot = ")[0]
        self.config.write_text(text + f"reboot = {json.dumps(policy)}\n")

    def reboots(self) -> int:
        log = self.base / "reboots"
        return len(log.read_text().splitlines()) if log.exists() else 0


def _rows(text: str) -> list[tuple[str, str, str | None]]:
    rows: list[tuple[str, str, str | None]] = []
    for line in text.splitlines():
        if line[:2] in ("* ", "  ") and not line.startswith("    "):
            flags = [w.strip("()") for w in line[2:].split()[2:]]
            mark = ("*" if line[0] == "*" else "") + "".join(flags)
            rows.append((mark, "", None))
        elif line.strip().startswith("Version:"):
            rows[-1] = (rows[-1][0], line.split(":", 1)[1].strip(), rows[-1][2])
        elif line.strip().startswith("origin refspec:"):
            rows[-1] = (rows[-1][0], rows[-1][1], line.split(":", 1)[1].strip())
    return rows


def make_machine(base: Path, chain: Chain, sysroot_keys: str = "") -> Machine:
    """``ostree admin deploy`` v1 into a fresh sysroot (kargs root=LABEL=rootfs, origin origin:os/stable)."""
    sysroot = base / "sysroot"
    sysroot.mkdir(parents=True)
    ostree("admin", "init-fs", sysroot)
    ostree("admin", "os-init", f"--sysroot={sysroot}", OSNAME)
    repo = f"--repo={sysroot / 'ostree' / 'repo'}"
    ostree(repo, "remote", "add", "--no-gpg-verify", "origin", chain.url)
    ostree(repo, "pull-local", chain.repo, chain.v[1])
    ostree(repo, "refs", "--create=origin:os/stable", chain.v[1])
    ostree(
        "admin",
        "deploy",
        f"--sysroot={sysroot}",
        f"--os={OSNAME}",
        "--karg=root=LABEL=rootfs",
        "origin:os/stable",
    )
    recorder = base / "reboot-recorder"
    recorder.write_text(f'#!/bin/sh\necho "$0 $*" >> {base / "reboots"}\n')
    recorder.chmod(0o755)
    config = base / "lanshare.toml"
    config.write_text(
        f'[repo]\npath = "{base / "cache"}"\n'
        f'[database]\nurl = "sqlite:///{base / "index.sqlite"}"\n'
        f'[origin]\nurl = "{chain.url}"\n'
        f'[trust]\ngpg_keyring = "{chain.keyring}"\n'
        f'[upgrade]\ndeploy = "ostree-admin"\n{sysroot_keys}'
        f'reboot_command = ["{recorder}", "now"]\nreboot = "never"\n'
    )
    return Machine(base, sysroot, config, chain)


def _unmake(base: Path) -> None:
    # Deployment directories are immutable (chattr +i): pytest could not remove them.
    for path in base.glob("sysroot/ostree/deploy/*/deploy/*"):
        if path.is_dir():
            subprocess.run(["chattr", "-i", str(path)], check=False)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def machine(tmp_path: Path, chain: Chain) -> Iterator[Machine]:
    m = make_machine(tmp_path / "m", chain)
    yield m
    _unmake(tmp_path / "m")


def _window_around_now() -> str:
    now = dt.datetime.now()
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(hours=1)
    return f"{start:%H:%M}-{end:%H:%M}"


def test_a_booted_machine_walks_the_chain_one_boot_at_a_time(machine: Machine, chain: Chain) -> None:
    v = chain.v
    assert machine.booted_status(1) == [("*", "1", "origin:os/stable")]

    # Run 1 deploys the checkpoint v2, pending; reboot = "after-step" reboots right after.
    machine.set_reboot("after-step")
    run = machine.upgrade(1)
    assert run.returncode == 10, run.stderr
    assert f"deploying {v[2]} on os/stable, version 2: checkpoint" in run.stdout
    assert "reboot needed into 2" in run.stdout and "rebooting now" in run.stdout
    assert machine.reboots() == 1
    assert machine.booted_status(1) == [("pending", "2", "origin:os/stable"), ("*", "1", "origin:os/stable")]

    # Run 2, before the reboot: nothing deployed again; inside a maintenance window it reboots.
    machine.set_reboot(_window_around_now())
    run = machine.upgrade(1, "--json")
    assert run.returncode == 11, run.stderr
    report = json.loads(run.stdout)
    assert report["status"] == "reboot-needed" and report["reboot_needed"] is True
    assert report["pending"]["commit"] == v[2] and report["steps_deployed"] == [] and report["rebooting"]
    assert machine.reboots() == 2
    assert len(machine.status()) == 2
    machine.set_reboot("never")
    run = machine.upgrade(1)
    assert run.returncode == 11 and f"reboot needed into 2: {v[2]} on os/stable" in run.stdout
    assert machine.reboots() == 2

    # Booted into v2: run 3 deploys v4 (the head of os/stable, whose target is os/stable-v2).
    run = machine.upgrade(2)
    assert run.returncode == 10, run.stderr
    assert f"deploying {v[4]} on os/stable, version 4" in run.stdout
    # libostree keeps the booted deployment and the new one (`ostree admin deploy` without --retain).
    assert machine.booted_status(2) == [("pending", "4", "origin:os/stable"), ("*", "2", "origin:os/stable")]
    assert machine.upgrade(2).returncode == 11

    # Booted into v4: v5 on os/stable-v2, the ref switch done through the origin refspec.
    run = machine.upgrade(4)
    assert run.returncode == 0, run.stderr
    assert (
        f"deploying {v[5]} on os/stable-v2, version 5" in run.stdout and "reboot needed into 5" in run.stdout
    )
    assert machine.booted_status(4)[0] == ("pending", "5", "origin:os/stable-v2")
    run = machine.upgrade(5)
    assert run.returncode == 0 and f"up to date: {v[5]}" in run.stdout
    assert machine.booted_status(5) == [
        ("*", "5", "origin:os/stable-v2"),
        ("rollback", "4", "origin:os/stable"),
    ]
    # The kernel arguments of the first deployment were kept all along; the sysroot repo is sound.
    entries = list((machine.sysroot / "boot" / "loader" / "entries").glob("*.conf"))
    assert entries and all("root=LABEL=rootfs" in e.read_text() for e in entries)
    sysroot_repo = machine.sysroot / "ostree" / "repo"
    assert ostree(f"--repo={sysroot_repo}", "rev-parse", "origin:os/stable-v2").stdout.strip() == v[5]
    assert ostree("fsck", f"--repo={sysroot_repo}", check=False).returncode == 0


def test_an_image_build_sysroot_nothing_booted_walks_to_the_end(tmp_path: Path, chain: Chain) -> None:
    m = make_machine(tmp_path / "m", chain, f'sysroot = "{tmp_path / "m" / "sysroot"}"\nos = "{OSNAME}"\n')
    try:
        m.set_reboot("after-step")
        run = m.upgrade(None, "--all")
        assert run.returncode == 0, run.stderr
        # Nothing is booted: the default deployment counted as deployed, and the output says so.
        assert "nothing is booted: the default (first) deployment counts as deployed" in run.stdout
        assert "reboot needed" not in run.stdout and m.reboots() == 0  # no reboot of the build host
        assert m.status()[0] == ("", "5", "origin:os/stable-v2")
        run = m.upgrade(None)
        assert run.returncode == 0 and f"up to date: {chain.v[5]}" in run.stdout
    finally:
        _unmake(tmp_path / "m")


def test_a_sysroot_that_is_not_one_is_a_clear_failure(tmp_path: Path) -> None:
    config = tmp_path / "lanshare.toml"
    config.write_text(
        f'[repo]\npath = "{tmp_path / "cache"}"\n[upgrade]\ndeploy = "ostree-admin"\nsysroot = "{tmp_path}"\n'
    )
    run = subprocess.run(
        [sys.executable, "-m", "lanshare.cli", "upgrade", "--config", str(config)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert (
        f"reading the deployed commit: `{shutil.which('ostree')} admin status --sysroot={tmp_path}` exited"
        in run.stderr
    )
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_real_ostree_admin_status_output_is_read() -> None:
    c1, c2 = "a" * 64, "b" * 64
    booted = f"  os {c2}.0 (pending)\n    Version: 2\n* os {c1}.0\n    origin refspec: o:os/stable\n"
    assert parse_deployed(booted) == (c1, "os/stable")
    nothing_booted = f"  os {c2}.0\n    Version: 2\n    origin refspec: o:os/stable-v2\n  os {c1}.0\n"
    assert parse_deployed(nothing_booted) == (c2, "os/stable-v2")
    with pytest.raises(ValueError, match=r"got 'error: Unexpected state' \| 'line two'"):
        parse_deployed("error: Unexpected state\nline two\n")


def test_reboot_windows() -> None:
    window = parse_reboot("Mon..Fri 02:00-04:00")
    monday_3am = dt.datetime(2026, 12, 7, 3, 0)
    assert window.reboot_now(deployed_now=False, now=monday_3am)
    assert not window.reboot_now(deployed_now=True, now=monday_3am.replace(hour=4))
    assert not window.reboot_now(deployed_now=True, now=monday_3am.replace(day=6))  # a Sunday
    overnight = parse_reboot("Sat,Sun 22:00-02:00")
    assert overnight.reboot_now(deployed_now=False, now=dt.datetime(2026, 12, 7, 1, 0))  # Sunday's night
    assert not overnight.reboot_now(deployed_now=False, now=dt.datetime(2026, 12, 8, 1, 0))
    assert parse_reboot("never").reboot_now(deployed_now=True, now=monday_3am) is False
    assert parse_reboot("after-step").reboot_now(deployed_now=True, now=monday_3am)
    assert not parse_reboot("after-step").reboot_now(deployed_now=False, now=monday_3am)
    for bad in ("sometimes", "Mon..Fry 02:00-04:00", "02:00-02:00", "25:00-26:00"):
        with pytest.raises(ValueError, match=r"Mon\.\.Fri 02:00-04:00"):
            parse_reboot(bad)


def test_the_status_page_and_lanshare_status_say_reboot_needed(tmp_path: Path) -> None:
    booted, pending = "a" * 64, "b" * 64
    text = f"  os {pending}.0 (pending)\n    Version: 2\n* os {booted}.0\n    Version: 1\n"
    (tmp_path / "status.txt").write_text(text)
    (tmp_path / "lanshare.toml").write_text(
        f'[upgrade]\ndeployed_commit_command = ["cat", "{tmp_path / "status.txt"}"]\n'
    )
    deployed = model.read_deployed(load_config(tmp_path / "lanshare.toml", environ={}))
    assert (deployed["commit"], deployed["pending"]) == (booted, pending)
    status: dict[str, Any] = {
        "deployed": {**deployed, "path": None, "path_error": "not computed here", "missing": []}
    }
    html = page._deployed(status)
    assert "Reboot needed: <code" in html and f">{pending}</code> is deployed and pending" in html
    status["node_id"], status["version"], status["listeners"] = "n", "0", {"lan": "x", "status": "y"}
    status["refs"], status["pins"] = [], []
    status["disk"] = {"used_bytes": None, "max_bytes": 1}
    status["peers"], status["transfers"], status["errors"] = [], [], {"recent": []}
    status["savings"] = {"saved_percent": None}
    assert f"  reboot needed: {pending[:12]} is deployed and pending" in status_command._summary(status)
