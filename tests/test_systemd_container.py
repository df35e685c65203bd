"""The shipped units under a real systemd: PID 1 of a container booted over the host's own root.

``systemd-nspawn --volatile=overlay`` boots the host's root read-only with a tmpfs overlay and its
own network namespace (``../shared/TESTING.md``).  Into it go ``lanshare.service``, the sysusers
snippet and ``lanshare-upgrade.service`` + ``.timer`` as shipped; drop-ins change only what this
machine needs (where Python and this source tree are, a short watchdog, a timer firing now).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_upgrade import HOOK, Chain, chain

__all__ = ["chain"]  # the module-scoped origin fixture, shared with test_upgrade.py

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
SOURCE_ROOT = Path(__file__).resolve().parent.parent
PYTHON = "/opt/lanshare-python"  # the interpreter's prefix, bound in (ProtectHome= hides /root)
# The checkout under test, bound in: it may live under /tmp, which the container gets fresh.
SOURCE = "/opt/lanshare-source"
ORIGIN_PORT = 8070

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("systemd-nspawn") is None or sys.prefix != sys.base_prefix,
    reason="needs root, systemd-nspawn (.ci/setup installs systemd-container) and a non-venv Python",
)

BOOT = """
set -e
# Our own cgroups, so that nspawn's sub-cgroups can be removed afterwards.
for h in systemd unified; do
    mkdir -p "/sys/fs/cgroup/$h/$CGROUP" && echo $$ > "/sys/fs/cgroup/$h/$CGROUP/cgroup.procs"
done
root=$1; shift
mount -t tmpfs tmpfs /run
mount --bind / "$root"
mount -o remount,bind,ro "$root"
# Fresh /tmp and /var/tmp: systemd-tmpfiles would otherwise empty the host's (into the overlay) at boot.
exec systemd-nspawn -D "$root" --volatile=overlay --boot --register=no --keep-unit --private-network \
    --console=read-only -M lanshare-test --tmpfs=/tmp --tmpfs=/var/tmp "$@" systemd.unit=basic.target
"""


def _dropin(exec_start: str, extra: str = "") -> str:
    python = f"{PYTHON}/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    return (
        f"[Service]\nExecStart=\nExecStart={python} -m lanshare.cli {exec_start}\n"
        f"Environment=PYTHONPATH={SOURCE} LD_LIBRARY_PATH={PYTHON}/lib\n{extra}"
    )


@dataclass
class Container:
    """A booted container: commands run inside it through ``nsenter``."""

    init: int

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["nsenter", "-t", str(self.init), "-a", *argv], capture_output=True, text=True, timeout=120
        )
        assert not check or done.returncode == 0, (argv, done.stdout, done.stderr)
        return done

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "-p", prop, "--value", unit).stdout.strip()

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit).stdout

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)

    def get(self, url: str) -> bytes:
        """GET ``url`` from inside the container's network namespace (the host's files, its network)."""
        code = "import sys, urllib.request as u; sys.stdout.buffer.write(u.urlopen(sys.argv[1]).read())"
        done = subprocess.run(
            ["nsenter", "-t", str(self.init), "-n", sys.executable, "-c", code, url],
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory, chain: Chain) -> Iterator[Container]:
    base = tmp_path_factory.mktemp("container")
    files: dict[str, str] = {
        "/etc/systemd/system/lanshare.service.d/test.conf": _dropin("serve", "WatchdogSec=2s\n"),
        "/etc/systemd/system/lanshare-upgrade.service.d/test.conf": _dropin("upgrade"),
        "/etc/systemd/system/lanshare-upgrade.timer.d/test.conf": "[Timer]\nOnActiveSec=1s\n"
        "RandomizedDelaySec=0\n",
        "/etc/lanshare/lanshare.toml": (
            f'[origin]\nurl = "http://127.0.0.1:{ORIGIN_PORT}/"\n'
            '[trust]\ngpg_keyring = "/etc/lanshare/trusted.gpg"\n'
            "[sharing]\nadvertise = false\ndiscovery = false\n"
            '[upgrade]\ndeploy_command = ["/etc/lanshare/deploy-hook"]\n'
            'deployed_commit_file = "/var/lib/lanshare-deployed"\n'
        ),
        "/etc/lanshare/deploy-hook": HOOK,
        "/etc/lanshare/trusted.gpg": "",
    }
    binds: list[str] = []
    for number, (target, text) in enumerate(files.items()):
        source = base / f"file-{number}"
        if target.endswith("trusted.gpg"):
            shutil.copy(chain.keyring, source)
        else:
            source.write_text(text)
        source.chmod(0o755 if target.endswith("hook") else 0o644)
        binds.append(f"--bind-ro={source}:{target}")
    for name in ("lanshare.service", "lanshare-upgrade.service", "lanshare-upgrade.timer"):
        binds.append(f"--bind-ro={SYSTEMD_DIR / name}:/etc/systemd/system/{name}")
    binds.append(f"--bind-ro={SYSTEMD_DIR / 'lanshare.sysusers.conf'}:/etc/sysusers.d/lanshare.conf")
    binds.append(f"--bind-ro={sys.base_prefix}:{PYTHON}")
    binds.append(f"--bind-ro={SOURCE_ROOT}:{SOURCE}")
    (base / "root").mkdir()
    cgroup = f"lanshare-test-{os.getpid()}"
    log = open(base / "nspawn.log", "wb")  # noqa: SIM115 - closed below
    nspawn = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", BOOT, "boot", str(base / "root"),
         *binds],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "CGROUP": cgroup},
    )  # fmt: skip
    origin: subprocess.Popen[bytes] | None = None
    try:
        box = Container(0)

        def booted() -> bool:
            # nspawn's first child may be a short-lived helper: ask whichever child is there now,
            # until its PID 1 answers (before that, systemctl says "Failed to connect to bus").
            assert nspawn.poll() is None, (base / "nspawn.log").read_text()
            children = Path(f"/proc/{nspawn.pid}/task/{nspawn.pid}/children").read_text().split()
            if len(children) != 1:
                return False
            box.init = int(children[0])
            state = box.run("systemctl", "is-system-running", "--wait", check=False).stdout.strip()
            return state in ("running", "degraded")

        box.wait_for("systemd in the container", booted)
        # The origin, served inside the container's network namespace from the host's files.
        origin = subprocess.Popen(
            ["nsenter", "-t", str(box.init), "-n", sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
             "--directory", str(chain.repo), str(ORIGIN_PORT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        yield box
    finally:
        if origin is not None:
            origin.terminate()
            origin.wait(10)
        nspawn.terminate()  # SIGTERM to nspawn halts the container cleanly
        try:
            nspawn.wait(60)
        finally:
            if nspawn.poll() is None:
                nspawn.kill()
                nspawn.wait()
            log.close()
            for hierarchy in ("systemd", "unified"):
                top = Path("/sys/fs/cgroup") / hierarchy / cgroup
                for directory in sorted(top.rglob("*"), key=lambda p: -len(p.parts)) if top.exists() else []:
                    if directory.is_dir():
                        directory.rmdir()
                if top.exists():
                    top.rmdir()


def test_the_daemon_runs_hardened_under_systemd_and_stops_cleanly(container: Container) -> None:
    container.run("systemctl", "start", "lanshare.service")  # Type=notify: returns once READY=1 came
    assert container.show("lanshare.service", "ActiveState") == "active"
    pid = container.show("lanshare.service", "MainPID")
    status = dict(
        line.split(":\t", 1)
        for line in container.run("cat", f"/proc/{pid}/status").stdout.splitlines()
        if ":\t" in line
    )
    uid = container.run("id", "-u", "lanshare").stdout.strip()
    assert status["Uid"].split()[0] == uid != "0"  # its own user, made by the sysusers snippet
    assert status["CapEff"] == "0000000000000000" and status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    # It answers on both ports: the status API on loopback, the LAN listener for peers.
    document = json.loads(container.get("http://127.0.0.1:8090/api/v1/status"))
    assert document["node_id"] and document["listeners"]["lan"].endswith(":8089")
    assert b"[core]" in container.get("http://127.0.0.1:8089/config")
    # The watchdog holds: pings keep arriving past several WatchdogSec=2s periods, no restart.
    first = container.show("lanshare.service", "WatchdogTimestampMonotonic")
    container.wait_for(
        "a newer watchdog ping",
        lambda: container.show("lanshare.service", "WatchdogTimestampMonotonic") != first,
    )
    time.sleep(5)
    assert container.show("lanshare.service", "ActiveState") == "active"
    assert container.show("lanshare.service", "NRestarts") == "0"
    # Root's `lanshare pull` is handed to the hardened daemon over its control socket, which only
    # the daemon's user (and root) may use; what it pulls belongs to the daemon's user.
    socket = container.run("stat", "-c", "%U %a %F", "/var/lib/lanshare/control.sock").stdout.split()
    assert socket[:2] == ["lanshare", "600"] and "socket" in socket[2:], socket
    python = f"{PYTHON}/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    pulled = container.run(
        "env", f"PYTHONPATH={SOURCE}", f"LD_LIBRARY_PATH={PYTHON}/lib",
        python, "-m", "lanshare.cli", "pull", "os/stable", "--json",
    )  # fmt: skip
    document = json.loads(pulled.stdout)
    assert document["pulled_by"] == "daemon" and document["ref"] == "os/stable", pulled
    owned = container.run("find", "/var/lib/lanshare", "-not", "-user", "lanshare").stdout.split()
    assert owned == []

    container.run("systemctl", "stop", "lanshare.service")  # SIGTERM
    assert container.show("lanshare.service", "Result") == "success"
    journal = container.journal("lanshare.service")
    assert "lanshare.service: Deactivated successfully." in journal, journal
    assert "watchdog timeout" not in journal.lower()


def test_the_timer_runs_upgrade_and_the_journal_has_it(container: Container, chain: Chain) -> None:
    container.run("systemctl", "start", "lanshare.service")
    handed_before = container.journal("lanshare.service").count("handed over by a command")
    container.run("sh", "-c", f"echo {chain.v1} > /var/lib/lanshare-deployed")
    container.run("systemctl", "start", "lanshare-upgrade.timer")
    container.wait_for(
        "the timer's run of lanshare-upgrade.service",
        lambda: container.show("lanshare-upgrade.service", "ExecMainExitTimestampMonotonic") not in ("", "0"),
    )
    journal = container.journal("lanshare-upgrade.service")
    assert f"deploying {chain.v2} on os/stable, version 2: checkpoint" in journal, journal
    assert "hook deployed 2" in journal
    # Exit 10 (a step deployed, more remain) is a success for the unit, not a failure to alert on.
    assert container.show("lanshare-upgrade.service", "ExecMainStatus") == "10"
    assert container.show("lanshare-upgrade.service", "Result") == "success"
    assert container.run("cat", "/var/lib/lanshare-deployed").stdout.strip() == chain.v2
    # The daemon ran the upgrade's pulls (its control socket), so the cache stays the daemon's
    # user's: nothing in it belongs to root.
    journal = container.journal("lanshare.service")
    assert journal.count("handed over by a command") > handed_before, journal
    owned = container.run("find", "/var/lib/lanshare", "-not", "-user", "lanshare").stdout.split()
    assert owned == []
    assert container.show("lanshare.service", "ActiveState") == "active"
