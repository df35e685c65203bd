"""What bench_pull and bench_fanout share: a GPG-signed archive repository to serve, and the run.

Both benches commit a generated tree with ``ostree commit`` (signed with a fresh key), re-run
themselves in a private network namespace when they may, and print the same verdict at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from bench.bench_repo import BRANCH, PROJECT_ROOT, TIMESTAMP, BenchError, Commands, run_timed, work_directory
from bench.nginx import NginxError
from lanshare.ostree.signing import export_public_keyring
from lanshare.pull.pipeline import WORKERS_ENV

# Set in the copy of the bench that runs inside its own network namespace.
NETNS_ENV = "LANSHARE_BENCH_PULL_NETNS"


class Tools(Commands):
    """Command lines of both clients."""

    def __init__(self) -> None:
        super().__init__()
        if shutil.which("gpg") is None:
            raise BenchError("gpg is not installed (apt-get install gnupg)")

    def ostree_cmd(self, *args: str | Path) -> str:
        """Run an untimed ostree command; its stdout."""
        return run_timed([self.ostree, *args]).stdout


def client_tools(store_workers: int | None) -> Tools:
    """The clients' tools; ``store_workers`` (not None) sets their worker processes (0: threads)."""
    tools = Tools()
    if store_workers is not None:  # lanshare.pull.pipeline's knob: 0 stores in threads
        tools.env[WORKERS_ENV] = str(store_workers)
    return tools


def verdict(ok: bool) -> str:
    """How a report prints a goal: met or not (never asserted)."""
    return "PASS" if ok else "MISS"


def _make_signing_key(homedir: Path, keyring: Path) -> str:
    homedir.mkdir(mode=0o700, parents=True)

    def gpg(*args: str) -> str:
        cmd = ["gpg", "--homedir", str(homedir), "--batch", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BenchError(f"gpg {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    gpg("--passphrase", "", "--quick-gen-key", "Bench <bench@example.com>", "ed25519", "sign", "never")
    listing = gpg("--with-colons", "--list-keys")
    key_id = next(line.split(":")[4] for line in listing.splitlines() if line.startswith("pub:"))
    export_public_keyring(homedir, [key_id], keyring)
    return key_id


def _stop_gpg_agent(homedir: Path) -> None:
    if homedir.exists() and shutil.which("gpgconf"):
        subprocess.run(["gpgconf", "--homedir", str(homedir), "--kill", "all"], capture_output=True)


def _objects(repo: Path) -> tuple[int, int]:
    """Object files and their bytes."""
    count = size = 0
    for d, _, names in os.walk(repo / "objects"):
        for n in names:
            count += 1
            size += os.lstat(os.path.join(d, n)).st_size
    return count, size


@dataclass(frozen=True)
class SignedCommit:
    """The served commit and the archive repository's object files."""

    commit: str
    objects: int
    archive_bytes: int


def commit_signed(tools: Tools, tree: Path, gpg_home: Path, keyring: Path, source: Path) -> SignedCommit:
    """Make a signing key (public part in ``keyring``), commit ``tree`` signed into a new archive
    repository ``source`` with its summary.  ``tree`` is left for the end of the bench: deleting
    its thousands of files now would slow file creation on ext4 for the next minutes, charged to
    whichever way of pulling ran first (an empty file took ~450 us to create instead of ~25)."""
    key_id = _make_signing_key(gpg_home, keyring)
    tools.ostree_cmd("init", f"--repo={source}", "--mode=archive")
    tools.ostree_cmd(
        "commit", f"--repo={source}", f"--branch={BRANCH}", "--owner-uid=0", "--owner-gid=0",
        "--no-xattrs", f"--timestamp=@{TIMESTAMP}", f"--gpg-sign={key_id}", f"--gpg-homedir={gpg_home}",
        tree,
    )  # fmt: skip
    tools.ostree_cmd("summary", "-u", f"--repo={source}")
    commit = tools.ostree_cmd("rev-parse", f"--repo={source}", BRANCH).strip()
    objects, archive_bytes = _objects(source)
    return SignedCommit(commit, objects, archive_bytes)


def _can_unshare_net() -> bool:
    """Whether this process may create a network namespace (root, unshare and ip installed, allowed)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "--", "true"], capture_output=True).returncode == 0


def in_private_netns(module: str, argv: Sequence[str]) -> int:
    """Run bench ``module`` again inside ``unshare -n`` with ``lo`` up; its exit status."""
    env = {**os.environ, NETNS_ENV: "1"}
    pythonpath = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(PROJECT_ROOT) + (os.pathsep + pythonpath if pythonpath else "")
    inner = [sys.executable, "-m", module, *argv]
    script = 'ip link set lo up && exec "$@"'
    return subprocess.run(
        ["unshare", "-n", "--", "sh", "-c", script, "sh", *inner], env=env, cwd=PROJECT_ROOT
    ).returncode


class _Checked(Protocol):
    failures: list[str]


R = TypeVar("R", bound=_Checked)


def run_and_report(
    keep: Path | None, prefix: str, measure: Callable[[Path], R], report: Callable[[R], str]
) -> int:
    """Measure in the work directory and print the report; 1 if the bench failed or a pulled
    repository is wrong (its ``failures``), else 0."""
    with work_directory(keep, prefix) as workdir:
        try:
            result = measure(workdir)
        except (BenchError, NginxError) as e:
            print(f"bench failed: {e}", file=sys.stderr)
            return 1
    print()
    print(report(result))
    if result.failures:
        print("bench failed: a pulled repository is wrong (see FAILED above)", file=sys.stderr)
        return 1
    return 0
