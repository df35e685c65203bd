"""A full disk: the repository and state directory on a small tmpfs, in a mount namespace of the test's own.

A machine whose cache disk fills mid-pull must say so in one line, keep every object it shows
verified (both fscks agree), free its temporary files, keep serving what it already had, and
finish the pull once there is room again.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lanshare.ostree.repo import Repo
from tests.conftest import build_tree, lanshare
from tests.test_serve import Daemon, _start, _stop

SOURCE_ROOT = Path(__file__).resolve().parent.parent
TMPFS_BYTES = 3 * 1024 * 1024
BIG_BYTES = 8 * 1024 * 1024  # incompressible: cannot fit on the tmpfs

pytestmark = pytest.mark.needs("root", "unshare")  # a tmpfs in a mount namespace

# Runs inside `unshare -m`: mounts the tmpfs, then drives the real CLI and daemon on it.  Prints one
# JSON document with what it saw; the test asserts on it.
INSIDE = r"""
import json, os, signal, subprocess, sys, time, urllib.request
from pathlib import Path

mount, source, ostree = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
subprocess.run(["mount", "--make-rprivate", "/"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={sys.argv[4]}", "tmpfs", str(mount)], check=True)
repo, state = mount / "repo", mount / "state"
config = mount / "lanshare.toml"
config.write_text(
    f'[repo]\npath = "{repo}"\n[trust]\nrequire_signatures = false\n'
    '[sharing]\nlisten = "127.0.0.1:0"\nadvertise = false\ndiscovery = false\n'
)
env = {**os.environ, "LANSHARE_STATE_DIR": str(state)}
cli = [sys.executable, "-m", "lanshare.cli"]
out = {}

def run(*args, **kw):
    return subprocess.run([*args], capture_output=True, text=True, env=env, timeout=120, **kw)

def lanshare(*args):
    p = run(*cli, *args, "--config", str(config))
    return {"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr}

out["small"] = lanshare("pull", "os/small", "--from", source)
daemon = subprocess.Popen([*cli, "serve", "--config", str(config)], env=env,
                          stdout=open("/dev/null", "wb"), stderr=subprocess.PIPE, text=True)
address = state / "lan-address"
deadline = time.monotonic() + 30
while not address.exists() and daemon.poll() is None and time.monotonic() < deadline:
    time.sleep(0.05)
url = "http://" + address.read_text().strip() + "/"
out["big"] = lanshare("pull", "os/big", "--from", source)
out["df"] = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
out["tmp"] = sorted(os.listdir(repo / "tmp"))
out["fsck"] = lanshare("fsck")
p = run(ostree, "fsck", f"--repo={repo}")
out["ostree_fsck"] = {"rc": p.returncode, "stderr": p.stderr}
out["refs"] = sorted(p.name for p in (repo / "refs" / "heads" / "os").iterdir())
out["partial"] = sorted(p.name for p in (repo / "state").glob("*.commitpartial"))
out["commits"] = sorted(p.parent.name + p.stem for p in (repo / "objects").glob("*/*.commit"))
# The daemon that was serving while the disk filled still serves every object it has.
served = {}
for obj in sorted((repo / "objects").glob("*/*")):
    rel = obj.relative_to(repo).as_posix()
    with urllib.request.urlopen(url + rel, timeout=30) as response:
        served[rel] = response.read() == obj.read_bytes()
out["served"] = served
with urllib.request.urlopen(url + "lanshare/v1/info", timeout=30) as response:
    out["info"] = json.load(response)
daemon.send_signal(signal.SIGTERM)
out["daemon_rc"] = daemon.wait(30)
out["daemon_log"] = daemon.stderr.read()
# Room again (as after `lanshare prune` or a larger disk): the same pull completes.
subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
out["retry"] = lanshare("pull", "os/big", "--from", source)
out["fsck_after"] = lanshare("fsck")
p = run(ostree, "fsck", f"--repo={repo}")
out["ostree_fsck_after"] = {"rc": p.returncode, "stderr": p.stderr}
out["tmp_after"] = sorted(set(os.listdir(repo / "tmp")) - {"cache"})  # ostree fsck makes tmp/cache
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, dict[str, str]]]:
    """A publisher with a small commit and one far larger than the tmpfs, served by lanshare."""
    base = tmp_path_factory.mktemp("full-disk-source")
    repo = base / "repo"
    small = build_tree(base / "small", 1)
    big = build_tree(base / "big", 2)
    rng = random.Random(7)
    for i in range(BIG_BYTES // 400_000):
        (big / f"blob{i}.bin").write_bytes(rng.randbytes(400_000))
    commits = {}
    for ref, tree in (("os/small", small), ("os/big", big)):
        args = ("commit", "--repo", repo, "--branch", ref, "--tree", tree, "--no-xattrs")
        assert lanshare(*args) == 0
        commit = Repo.open(repo).read_ref(ref)
        assert commit is not None
        commits[ref] = commit
    (base / "daemon").mkdir()
    daemon = _start(base / "daemon", repo)
    yield daemon, commits
    assert _stop(daemon) == 0


def test_a_pull_that_fills_the_disk_fails_cleanly_and_the_daemon_keeps_serving(
    tmp_path: Path, source: tuple[Daemon, dict[str, str]]
) -> None:
    daemon, commits = source
    script = tmp_path / "inside.py"
    script.write_text(INSIDE)
    mount = tmp_path / "disk"
    mount.mkdir()
    ostree = shutil.which("ostree")
    assert ostree is not None, "ostree CLI missing: .ci/setup installs it"
    result = subprocess.run(
        ["unshare", "-m", sys.executable, str(script), str(mount), daemon.url, ostree, str(TMPFS_BYTES)],
        capture_output=True,
        text=True,
        cwd=SOURCE_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["small"]["rc"] == 0, seen["small"]
    big = seen["big"]
    # One line a person can act on, naming the problem; no traceback.
    assert big["rc"] == 1, big
    lines = big["stderr"].strip().splitlines()
    assert len(lines) == 1 and "no space left" in lines[0].lower(), big["stderr"]
    assert str(mount / "repo") in lines[0], lines[0]
    # Nothing half-visible: every object verifies, the big commit is not complete, its ref absent.
    assert seen["tmp"] == [], seen["tmp"]
    assert seen["fsck"]["rc"] == 0, seen["fsck"]
    assert seen["ostree_fsck"]["rc"] == 0, seen["ostree_fsck"]
    assert seen["refs"] == ["small"]
    if commits["os/big"] in seen["commits"]:
        assert f"{commits['os/big']}.commitpartial" in seen["partial"]
    # The daemon kept serving every object, and its holdings still show the small commit.
    assert seen["served"] and all(seen["served"].values()), seen["served"]
    assert seen["info"]["refs"] == {"os/small": commits["os/small"]}
    assert seen["daemon_rc"] == 0, seen["daemon_log"]
    assert "Traceback" not in seen["daemon_log"], seen["daemon_log"]
    # With room again, the same pull completes from where it stopped.
    assert seen["retry"]["rc"] == 0, seen["retry"]
    assert seen["fsck_after"]["rc"] == 0 and seen["ostree_fsck_after"]["rc"] == 0, seen
    assert seen["tmp_after"] == []
    print(lines[0])
