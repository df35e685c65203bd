"""A self-contained demonstration: publish a checkpoint chain and verify it with lanshare and ostree.

``python3 -m lanshare.demo [DIR]`` builds an archive repository whose history has a mandatory
checkpoint and a ref rename (``os/stable`` → ``os/stable-v2``), checks it with ``lanshare fsck``
(and ``ostree fsck`` when the ostree CLI is installed), and prints the chain.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lanshare.fsck import fsck
from lanshare.gvariant import Variant
from lanshare.ostree.commit_tree import CommitOptions, commit_tree
from lanshare.ostree.repo import Repo

# (ref, version, metadata) for each published commit, oldest first.
CHAIN: list[tuple[str, str, dict[str, Variant]]] = [
    ("os/stable", "1", {}),
    ("os/stable", "2", {"lanshare.checkpoint": Variant("b", True)}),
    ("os/stable", "3", {}),
    ("os/stable", "4", {"eos.checkpoint-target": Variant("s", "os/stable-v2")}),
    ("os/stable-v2", "5", {}),
]


def publish_chain(repo: Repo, work: Path) -> list[str]:
    """Commit the demo chain into ``repo``; returns the commit checksums in order."""
    commits: list[str] = []
    tree = work / "tree"
    for index, (ref, version, metadata) in enumerate(CHAIN):
        shutil.rmtree(tree, ignore_errors=True)
        (tree / "etc").mkdir(parents=True)
        (tree / "etc" / "os-release").write_text(f"NAME=Demo OS\nVERSION_ID={version}\n")
        (tree / "usr" / "lib").mkdir(parents=True)
        (tree / "usr" / "lib" / "libdemo.so").write_bytes(bytes(range(256)) * (64 * (index + 1)))
        if ref == "os/stable-v2" and repo.read_ref(ref) is None:
            metadata = {**metadata, "lanshare.checkpoint-source": Variant("s", f"os/stable@{commits[-1]}")}
        options = CommitOptions(
            branch=ref,
            parent="none" if repo.read_ref(ref) is None else None,
            timestamp=1_700_000_000 + index * 86_400,
            subject=f"Demo OS {version}",
            metadata={"version": Variant("s", version), **metadata},
            owner_uid=0,
            owner_gid=0,
            xattrs=False,
        )
        checksum, _ = commit_tree(repo, tree, options)
        repo.write_ref(ref, checksum)
        commits.append(checksum)
    return commits


def main(argv: list[str] | None = None) -> int:
    """Build the demo repository, verify it, and print the chain."""
    args = sys.argv[1:] if argv is None else argv
    base = Path(args[0]) if args else Path(tempfile.mkdtemp(prefix="lanshare-demo-"))
    repo = Repo.init(base / "repo", "org.example.DemoOs")
    commits = publish_chain(repo, base)
    for (ref, version, metadata), checksum in zip(CHAIN, commits, strict=True):
        marks = ", ".join(k for k in metadata) or "-"
        print(f"{ref:14} v{version}  {checksum[:16]}  {marks}")
    report = fsck(repo)
    print(f"lanshare fsck: {report.objects_checked} objects, {len(report.problems)} problems")
    if shutil.which("ostree"):
        result = subprocess.run(["ostree", "fsck", f"--repo={repo.path}"], capture_output=True, text=True)
        print(f"ostree fsck: {'ok' if result.returncode == 0 else result.stderr.strip()}")
    print(f"repository: {repo.path}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
