"""``lanshare upgrade`` as root leaves the cache usable by the daemon's own unprivileged user.

The daemon runs as ``nobody`` and owns the cache; ``upgrade`` runs as root (deploying needs it) and
pulls a step into that cache.  Every file it writes must stay the daemon's: afterwards nothing in
the state directory belongs to root and ``lanshare prune`` as ``nobody`` succeeds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lanshare import daemon
from tests.test_upgrade import HOOK, Chain, chain

__all__ = ["chain"]  # the module-scoped origin fixture, shared with test_upgrade.py

NOBODY = 65534


def _hidden_prefix() -> tuple[str, str] | None:
    """A 0700 directory on the way to this interpreter (pyenv under /root), and the part below it."""
    path = Path(sys.base_prefix).resolve()
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            return str(parent), str(path.relative_to(parent)).split("/")[0]
    return None


# In a private mount namespace, make the interpreter reachable by nobody without touching the host:
# a 0755 tmpfs over the 0700 directory, with the interpreter's own directory bound back into it.
REACH = """
set -e
hold=$1; shift
mount --make-rprivate /
if [ -n "$HIDDEN" ]; then
    mount --bind "$HIDDEN" "$hold"
    mount -t tmpfs -o mode=0755 tmpfs "$HIDDEN"
    mkdir -p "$HIDDEN/$BELOW"
    mount --bind "$hold/$BELOW" "$HIDDEN/$BELOW"
fi
exec "$@"
"""


def reach(base: Path, *argv: str) -> list[str]:
    return ["unshare", "-m", "sh", "-c", REACH, "reach", str(base / "hold"), *argv]


AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)


@pytest.fixture
def base() -> Iterator[Path]:
    # Not under pytest's 0700 temporary directory: nobody must reach its files.
    path = Path(tempfile.mkdtemp(prefix="lanshare-owner-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_root_upgrade_leaves_the_daemons_cache_its_own(base: Path, chain: Chain) -> None:
    state = base / "state"
    state.mkdir(mode=0o750)
    os.chown(state, NOBODY, NOBODY)
    keyring = base / "trusted.gpg"
    shutil.copy(chain.keyring, keyring)
    keyring.chmod(0o644)
    hook = base / "deploy-hook"
    hook.write_text(HOOK)
    hook.chmod(0o755)
    deployed = base / "deployed"
    deployed.write_text(chain.v1 + "\n")
    config = base / "lanshare.toml"
    config.write_text(
        f'[origin]\nurl = "{chain.url}"\n[trust]\ngpg_keyring = "{keyring}"\n'
        '[sharing]\nlisten = "127.0.0.1:0"\nadvertise = false\ndiscovery = false\n'
        '[retention]\nkeep_latest = 1\nkeep_younger_than = "1s"\n'
        f'[upgrade]\ndeploy_command = ["{hook}"]\ndeployed_commit_file = "{deployed}"\n'
    )
    config.chmod(0o644)
    hidden = _hidden_prefix()
    env = {**os.environ, "LANSHARE_STATE_DIR": str(state), "HIDDEN": hidden[0] if hidden else ""}
    env["BELOW"] = hidden[1] if hidden else ""
    (base / "hold").mkdir()
    cli = [sys.executable, "-m", "lanshare.cli"]
    log = base / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            reach(base, *AS_NOBODY, *cli, "serve", "--config", str(config)),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not (state / daemon.LAN_ADDRESS_FILE).exists():
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)

        run = subprocess.run(
            reach(base, *cli, "upgrade", "--config", str(config)), env=env, capture_output=True, text=True
        )
        assert run.returncode == 10, run.stderr
        assert (base / "hook.log").read_text().startswith(chain.v2)  # the hook itself ran as root
        # Everything upgrade wrote into the cache (objects, refs, summary, index) is the daemon's.
        written = [p for p in state.rglob("*") if p.lstat().st_uid != NOBODY or p.lstat().st_gid != NOBODY]
        assert written == [], [str(p) for p in written]
        assert any((state / "repo" / "objects").rglob("*.commit"))

        prune = subprocess.run(
            reach(base, *AS_NOBODY, *cli, "prune", "--config", str(config)),
            env=env,
            capture_output=True,
            text=True,
        )
        assert prune.returncode == 0, prune.stderr
        assert serve.poll() is None, log.read_text()
    finally:
        serve.terminate()
        assert serve.wait(30) == 0, log.read_text()
