"""The demo's OSTree sysroot: machine C deploys the chain into it with ``deploy = "ostree-admin"``.

Made as libostree's own tests make one: ``ostree admin init-fs``, ``os-init``, v1 pulled from C's
cache and deployed with ``ostree admin deploy --karg=…``.  Nothing is booted in it, so each deployed
step becomes the default deployment at once, as after a reboot on a real machine.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lanshare.deploy.deployed import Deployment, parse_ostree_admin

OSNAME = "demo"
KERNEL = "6.1.0-demo"


def add_boot_files(tree: Path, version: str) -> None:
    """What ``ostree admin deploy`` needs: a kernel, an initramfs, os-release, usr/etc, the top level."""
    modules = tree / "usr" / "lib" / "modules" / KERNEL
    modules.mkdir(parents=True, exist_ok=True)
    (modules / "vmlinuz").write_text(f"demo kernel {version}\n")
    (modules / "initramfs.img").write_text("demo initramfs\n")
    (tree / "usr" / "lib" / "os-release").write_text(
        f'ID=demo\nNAME="Demo OS"\nVERSION_ID={version}\nPRETTY_NAME="Demo OS {version}"\n'
    )
    (tree / "usr" / "etc").mkdir(parents=True, exist_ok=True)
    (tree / "usr" / "etc" / "hostname").write_text("demo\n")
    for name in ("bin", "sbin", "lib64"):
        (tree / "usr" / name).mkdir(exist_ok=True)
        (tree / name).symlink_to(f"usr/{name}")
    (tree / "lib").symlink_to("usr/lib")
    for name in ("sysroot", "boot", "dev", "proc", "run", "sys", "tmp", "var"):
        (tree / name).mkdir(exist_ok=True)
    (tree / "ostree").symlink_to("sysroot/ostree")


def _ostree(*args: str | Path) -> str:
    done = subprocess.run(["ostree", *map(str, args)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"ostree {' '.join(map(str, args))}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class DemoSysroot:
    """C's sysroot at ``path``."""

    path: Path

    @staticmethod
    def available() -> bool:
        return shutil.which("ostree") is not None

    @property
    def repo(self) -> Path:
        return self.path / "ostree" / "repo"

    def install(self, cache: Path, commit: str, origin_url: str) -> None:
        """v1 from the machine's cache, deployed under remote "origin" with a kernel argument."""
        self.path.mkdir(parents=True)
        _ostree("admin", "init-fs", self.path)
        _ostree("admin", "os-init", f"--sysroot={self.path}", OSNAME)
        _ostree(f"--repo={self.repo}", "remote", "add", "--no-gpg-verify", "origin", origin_url)
        _ostree(f"--repo={self.repo}", "pull-local", cache, commit)
        _ostree(f"--repo={self.repo}", "refs", "--create=origin:os/stable", commit)
        argv = ["admin", "deploy", f"--sysroot={self.path}", f"--os={OSNAME}", "--karg=root=LABEL=demo-root"]
        _ostree(*argv, "origin:os/stable")

    def status(self) -> str:
        """``ostree admin status`` of the sysroot, as printed."""
        return _ostree("admin", "status", f"--sysroot={self.path}")

    def deployments(self) -> list[Deployment]:
        return parse_ostree_admin(self.status())

    def kargs_kept(self) -> bool:
        entries = list((self.path / "boot" / "loader" / "entries").glob("*.conf"))
        return bool(entries) and all("root=LABEL=demo-root" in e.read_text() for e in entries)

    def fsck(self) -> bool:
        done = subprocess.run(["ostree", "fsck", f"--repo={self.repo}"], capture_output=True, timeout=300)
        return done.returncode == 0

    def make_removable(self) -> None:
        """Deployment directories are immutable (chattr +i); undo that so ``rm -rf`` of the demo works."""
        for path in (self.path / "ostree" / "deploy").glob("*/deploy/*"):
            if path.is_dir():
                subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)
