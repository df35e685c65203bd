"""The main job, shown end to end: a small LAN of machines walks a checkpoint chain with lanshare.

``python3 -m lanshare.demo [DIR]`` (as root, on Linux with ``ip netns``) builds a LAN of three
hosts, A, B and C, out of network namespaces it makes itself (:mod:`lanshare.netns`: nothing
touches the machine's real interfaces, so mDNS stays inside), and then, printing each step:

1. publishes a GPG-signed checkpoint chain (``os/stable`` v1 → v2 checkpoint → v3 → v4 switching to
   ``os/stable-v2`` → v5) with a throwaway key, served by ``python3 -m http.server`` on A's own
   loopback: only A can reach the origin;
2. starts ``lanshare serve`` on each host: A follows ``os/stable`` from the origin; B and C have no
   origin and no peers configured, run v1, and follow what they hold;
3. waits until A holds the chain, then until B and C found A over mDNS and converged to it;
4. runs ``lanshare upgrade`` on B until it is done: one deployed step per run (exit 10 while more
   remain), recorded by a deploy hook; then on C, whose OS is a real OSTree sysroot, with the
   built-in ``deploy = "ostree-admin"`` (``ostree admin status`` shows where it got to);
5. shows ``lanshare status`` of B and saves B's status page as HTML;
6. stops the daemons with SIGTERM, deletes the namespaces and checks every repository with
   ``lanshare fsck``.

Everything (repositories, configs, logs, the status page) stays in DIR, default a new temporary
directory.  Exit 0 only if B deployed every step of the update path and every fsck passed.
Without root or namespaces it falls back to the single-machine demo (publish, fsck, path) and says
why.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lanshare.demo_sysroot import DemoSysroot, add_boot_files
from lanshare.fsck import fsck
from lanshare.gvariant import Variant
from lanshare.netns import NetnsLan, NetnsUnavailable, netns_lan_context
from lanshare.netns_daemon import NamespaceDaemon, poll
from lanshare.ostree.commit_tree import CommitOptions, commit_tree
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.ostree.repo_summary import regenerate_summary
from lanshare.ostree.signing import export_public_keyring, sign_metadata
from lanshare.update_path import RepoGraph, compute_path

COLLECTION = "org.example.DemoOs"
ORIGIN_PORT = 8000
# Per wait; generous: the whole demo takes about 30 s on a busy 2-core machine.
WAIT = 60.0

# (ref, version, metadata) for each published commit, oldest first.
CHAIN: list[tuple[str, str, dict[str, Variant]]] = [
    ("os/stable", "1", {}),
    ("os/stable", "2", {"lanshare.checkpoint": Variant("b", True)}),
    ("os/stable", "3", {}),
    ("os/stable", "4", {"eos.checkpoint-target": Variant("s", "os/stable-v2")}),
    ("os/stable-v2", "5", {}),
]

# The deploy hook of every demo machine: record what it was asked to deploy, next to its config.
HOOK = """#!/bin/sh
echo "$LANSHARE_COMMIT $LANSHARE_REF $LANSHARE_VERSION" >> "$(dirname "$0")/deployed.log"
"""

T = TypeVar("T")


@dataclass(frozen=True)
class GpgKey:
    """The throwaway publisher key: its id, the GnuPG home holding it, its public keyring file."""

    key_id: str
    homedir: Path
    keyring: Path


def publish_chain(
    repo: Repo,
    work: Path,
    *,
    gpg: GpgKey | None = None,
    on_commit: Callable[[str, str], None] | None = None,
) -> list[str]:
    """Commit the demo chain into ``repo``; returns the commit checksums in order.

    ``gpg`` signs every commit; ``on_commit(version, checksum)`` runs after each ref moves.
    """
    commits: list[str] = []
    tree = work / "tree"
    for index, (ref, version, metadata) in enumerate(CHAIN):
        shutil.rmtree(tree, ignore_errors=True)
        (tree / "usr" / "lib").mkdir(parents=True)
        (tree / "usr" / "lib" / "libdemo.so").write_bytes(bytes(range(256)) * (64 * (index + 1)))
        add_boot_files(tree, version)  # machine C deploys these trees with `ostree admin deploy`
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
        checksum, data = commit_tree(repo, tree, options)
        if gpg is not None:
            # Signed before the ref moves, as `lanshare commit --gpg-sign` does.
            signed = sign_metadata(
                data, repo.load_commitmeta(checksum), gpg_key_ids=[gpg.key_id], gpg_homedir=gpg.homedir
            )
            repo.write_commitmeta(checksum, signed)
        repo.write_ref(ref, checksum)
        commits.append(checksum)
        if on_commit is not None:
            on_commit(version, checksum)
    shutil.rmtree(tree, ignore_errors=True)
    return commits


class DemoFailed(Exception):
    """A step of the demo did not happen; the message says which."""


class Narrator:
    """Prints each step with the seconds since the demo started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:5.1f} s] {text}", flush=True)

    def show(self, text: str) -> None:
        """Command output, indented under the step that produced it."""
        for line in text.rstrip().splitlines():
            print(f"           | {line}", flush=True)


def wait_until(check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Poll ``check`` until it returns something other than None/False."""
    value = poll(check, timeout, every=0.2)
    if value is None:
        raise DemoFailed(f"gave up after {timeout:.0f} s waiting for {what}")
    return value


class Machine(NamespaceDaemon):
    """One demo machine: its directory (config, state, repository, logs) and its ``lanshare serve``."""

    @property
    def name(self) -> str:
        return self.host.upper()

    @property
    def deployed_log(self) -> Path:
        return self.base / "deployed.log"

    def configure(self, keyring: Path, deployed: str, extra: str = "", upgrade: str | None = None) -> None:
        """Write the config, the deploy hook and the deployed-commit file (or ``upgrade``, its [upgrade])."""
        self.base.mkdir(parents=True, exist_ok=True)
        hook = self.base / "deploy"
        hook.write_text(HOOK)
        hook.chmod(0o755)
        deployed_file = self.base / "deployed-commit"
        deployed_file.write_text(deployed + "\n")
        self.write_config(
            f'collection_id = "{COLLECTION}"\n'
            f'[trust]\ngpg_keyring = "{keyring}"\n'
            '[sharing]\nlisten = "0.0.0.0:8089"\ninterfaces = ["eth0"]\n'
            '[status]\nlisten = "127.0.0.1:0"\n'
            + (
                upgrade
                or f'[upgrade]\ndeploy_command = ["{hook}"]\ndeployed_commit_file = "{deployed_file}"\n'
            )
            + extra
        )

    def check_alive(self) -> None:
        died = self.exited()
        if died is not None:
            raise DemoFailed(died)

    def listening(self) -> bool:
        self.check_alive()
        return super().listening()

    def holds(self, commits: dict[str, str]) -> bool:
        """Both heads of the chain are here, and every checkpoint and head is complete."""
        self.check_alive()
        if not self.repo.exists():
            return False
        repo = Repo.open(self.repo)
        heads = (repo.read_ref("os/stable"), repo.read_ref("os/stable-v2"))
        return heads == (commits["4"], commits["5"]) and all(
            repo.has_object(commits[v], ObjectType.COMMIT) and not repo.is_partial(commits[v])
            for v in ("2", "4", "5")
        )

    def peer_ids(self) -> set[str]:
        """Node ids in this machine's peer table."""
        return {peer.node_id for peer in self.known_peers()}


@contextlib.contextmanager
def throwaway_gpg_key(keyring: Path) -> Iterator[GpgKey]:
    """A fresh ed25519 signing key in a temporary GNUPGHOME; its agent is killed and the home deleted."""
    gpg = shutil.which("gpg")
    if gpg is None:
        raise DemoFailed("gpg is not installed (apt-get install gnupg)")
    # A short path: gpg-agent's socket lives in the home, and socket paths are limited to 107 bytes.
    homedir = Path(tempfile.mkdtemp(prefix="lanshare-demo-gpg-"))
    uid = "Demo OS Publisher <publisher@demo.invalid>"
    try:

        def run(*args: str) -> str:
            done = subprocess.run(
                [gpg, "--homedir", str(homedir), "--batch", *args], capture_output=True, text=True, timeout=60
            )
            if done.returncode != 0:
                raise DemoFailed(f"gpg {' '.join(args)}: {done.stderr.strip()}")
            return done.stdout

        run("--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never")
        listing = run("--with-colons", "--list-keys", uid)
        key_id = next(line.split(":")[4] for line in listing.splitlines() if line.startswith("pub:"))
        export_public_keyring(homedir, [key_id], keyring)
        yield GpgKey(key_id, homedir, keyring)
    finally:
        gpgconf = shutil.which("gpgconf")
        if gpgconf is not None:
            subprocess.run([gpgconf, "--homedir", str(homedir), "--kill", "all"], capture_output=True)
        shutil.rmtree(homedir, ignore_errors=True)


def expected_steps(origin: Repo, start: str) -> list[str]:
    """The update path from ``start`` as lanshare computes it on the publisher's repository."""
    return [step.commit for step in compute_path(RepoGraph(origin), start, "os/stable").steps]


def deployed_commits(machine: Machine) -> list[str]:
    if not machine.deployed_log.exists():
        return []
    return [line.split()[0] for line in machine.deployed_log.read_text().splitlines() if line.strip()]


def fsck_all(out: Narrator, repos: dict[str, Path], keyring: Path) -> bool:
    """``lanshare fsck`` (signatures included) on each repository, side by side; True if all passed."""
    fsck_cli = [sys.executable, "-m", "lanshare.cli", "fsck", "--gpg-keyring", str(keyring), "--repo"]
    runs = {
        name: subprocess.Popen(
            [*fsck_cli, str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for name, path in repos.items()
    }
    ok = True
    for name, proc in runs.items():
        output, _ = proc.communicate(timeout=300)
        verdict = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        out.say(f"lanshare fsck {name}: {verdict}")
        if proc.returncode != 0:
            out.show(output)
            ok = False
    return ok


class LanDemo:
    """Steps 1–6 on the namespace LAN (see the module docstring)."""

    def __init__(self, lan: NetnsLan, base: Path, out: Narrator) -> None:
        self.lan, self.base, self.out = lan, base, out
        self.a, self.b, self.c = (Machine(lan, host, base / host) for host in ("a", "b", "c"))
        self.machines = (self.a, self.b, self.c)
        self.origin_repo = base / "origin"
        self.keyring = base / "publisher.gpg"
        self.origin_proc: subprocess.Popen[bytes] | None = None
        self.commits: dict[str, str] = {}  # version → checksum
        # C deploys into a real OSTree sysroot with the built-in deployer (when ostree is installed).
        self.sysroot = DemoSysroot(base / "c" / "sysroot") if DemoSysroot.available() else None

    def version(self, checksum: str) -> str:
        return "v" + next((v for v, c in self.commits.items() if c == checksum), "?")

    def run(self) -> bool:
        """True if B walked the whole chain and every repository passed fsck."""
        lan = self.lan
        self.out.say(
            f"LAN up: hosts A {lan['a'].address}, B {lan['b'].address}, C {lan['c'].address} "
            f"(network namespaces {lan.tag}-*, on their own bridge)"
        )
        try:
            self.publish()
            self.start_daemons()
            self.converge()
            walked = self.upgrade_b()
            walked = self.upgrade_c() and walked
            self.show_status()
        finally:
            self.stop()
        repos = {"origin": self.origin_repo, **{m.name: m.repo for m in self.machines}}
        return fsck_all(self.out, repos, self.keyring) and walked

    def publish(self) -> None:
        """1. The signed chain, served on A's loopback only; B and C were installed with its v1."""
        with throwaway_gpg_key(self.keyring) as key:
            self.out.say(f"1. publisher: made a throwaway GPG key {key.key_id}; publishing the chain")
            repo = Repo.init(self.origin_repo, COLLECTION)

            def installed_at_v1(version: str, checksum: str) -> None:
                # B and C were installed with v1 long ago: a copy of the publisher's repo as it was.
                if version == "1":
                    for machine in (self.b, self.c):
                        shutil.copytree(self.origin_repo, machine.repo)

            checksums = publish_chain(repo, self.base, gpg=key, on_commit=installed_at_v1)
        regenerate_summary(repo)
        for (ref, version, metadata), checksum in zip(CHAIN, checksums, strict=True):
            self.commits[version] = checksum
            marks = ", ".join(k for k in metadata) or "-"
            self.out.show(f"{ref:14} v{version}  {checksum[:16]}  {marks}")
        with open(self.base / "origin.log", "wb") as log:
            self.origin_proc = self.lan.python(
                "a", "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(self.origin_repo),
                str(ORIGIN_PORT), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.out.say(
            f"   origin: http.server on A's loopback, 127.0.0.1:{ORIGIN_PORT}; B and C cannot reach it"
        )

    def start_daemons(self) -> None:
        """2. ``lanshare serve`` on each host; only A knows the origin."""
        v1 = self.commits["1"]
        origin = f'[origin]\nurl = "http://127.0.0.1:{ORIGIN_PORT}/"\nrefs = ["os/stable"]\n'
        self.a.configure(self.keyring, v1, origin)
        self.b.configure(self.keyring, v1)
        if self.sysroot is not None:
            self.sysroot.install(self.c.repo, v1, f"http://127.0.0.1:{ORIGIN_PORT}/")
            sysroot = f'[upgrade]\ndeploy = "ostree-admin"\nsysroot = "{self.sysroot.path}"\n'
            self.c.configure(self.keyring, v1, upgrade=sysroot)
        else:
            self.c.configure(self.keyring, v1)
        for machine in self.machines:
            machine.launch()
        self.out.say(
            "2. lanshare serve started on A (origin: os/stable), B and C (no origin, no peers, v1 deployed)"
        )
        if self.sysroot is not None:
            self.out.say(
                f"   C's OS is an OSTree sysroot ({self.sysroot.path}): v1 from `ostree admin deploy`"
            )
        for machine in self.machines:
            wait_until(machine.listening, f"lanshare serve on {machine.name} to listen")
        self.out.say("   all three daemons listen on port 8089 and advertise _lanshare._tcp over mDNS")

    def converge(self) -> None:
        """3. A pulls from the origin; B and C find it over mDNS and fetch the chain from the LAN."""
        a, b, c, commits = self.a, self.b, self.c, self.commits
        wait_until(lambda: a.holds(commits), "A to pull the chain from the origin")
        self.out.say("3. A pulled and verified the chain from the origin: os/stable → v4, os/stable-v2 → v5")
        wait_until(lambda: a.node_id in b.peer_ids() & c.peer_ids(), "B and C to find A over mDNS")
        self.out.say("   B and C found A over mDNS")
        wait_until(lambda: b.holds(commits) and c.holds(commits), "B and C to converge with the LAN")
        self.out.say(
            "   B and C converged: each holds both heads and every checkpoint, fetched from the LAN only"
        )
        wait_until(lambda: {a.node_id, c.node_id} <= b.peer_ids(), "B to see both A and C")
        peers = b.cli("peers")
        self.out.say("   lanshare peers on B:")
        self.out.show(peers.stdout + peers.stderr)

    def upgrade_b(self) -> bool:
        """4. ``lanshare upgrade`` on B until done; True if its hook deployed exactly the update path."""
        b = self.b
        expected = expected_steps(Repo.open(self.origin_repo), self.commits["1"])
        shown = ", ".join(self.version(s) for s in expected)
        self.out.say(f"4. lanshare upgrade on B, one step per run; the update path from v1 is {shown}")
        for run in range(1, len(expected) + 2):
            started = time.monotonic()
            done = b.cli("upgrade", "--json", timeout=180)
            said = f"   run {run}: exit {done.returncode} in {time.monotonic() - started:.1f} s"
            try:
                report: dict[str, Any] = json.loads(done.stdout)
            except ValueError:
                self.out.say(said)
                self.out.show(done.stdout + done.stderr)
                break
            for step in report.get("steps_deployed", []):
                commit = str(step["commit"])
                self.out.say(
                    f"{said} — deployed {self.version(commit)} ({step['ref']}, {commit[:16]}): "
                    f"{step.get('reason', '')}"
                )
            if not report.get("steps_deployed"):
                self.out.say(f"{said}, status {report.get('status')}")
            if done.returncode != 10:
                break
        deployed = deployed_commits(b)
        walked = deployed == expected
        recorded = (b.base / "deployed-commit").read_text().strip()
        names = ", ".join(self.version(d) for d in deployed) or "nothing"
        self.out.say(
            f"   B's deploy hook ran for {names}; deployed-commit is now {self.version(recorded)}"
            + ("" if walked else "  — NOT the whole path")
        )
        return walked

    def upgrade_c(self) -> bool:
        """4b. C walks the path into its sysroot with ``deploy = "ostree-admin"``; libostree is the judge."""
        sysroot, c = self.sysroot, self.c
        if sysroot is None:
            self.out.say("   (no ostree command: C's sysroot deployment is skipped)")
            return True
        self.out.say('   lanshare upgrade on C, [upgrade] deploy = "ostree-admin" into its sysroot:')
        for run in range(1, len(self.commits) + 1):
            started = time.monotonic()
            done = c.cli("upgrade", "--json", timeout=180)
            try:
                report: dict[str, Any] = json.loads(done.stdout)
            except ValueError:
                self.out.show(done.stdout + done.stderr)
                break
            deployed = ", ".join(self.version(str(s["commit"])) for s in report.get("steps_deployed", []))
            self.out.say(
                f"   C run {run}: exit {done.returncode} after {time.monotonic() - started:.1f} s, "
                + (f"deployed {deployed}" if deployed else f"status {report.get('status')}")
            )
            if done.returncode != 10:
                break
        status = sysroot.status()
        self.out.say(
            "   ostree admin status of C's sysroot (nothing is booted there: the first is the default):"
        )
        self.out.show(status)
        default = sysroot.deployments()[0]
        walked = default.commit == self.commits["5"] and default.refspec == "origin:os/stable-v2"
        kept, sound = sysroot.kargs_kept(), sysroot.fsck()
        self.out.say(
            f"   C's sysroot: {'v5 on origin:os/stable-v2' if walked else 'NOT at v5 on os/stable-v2'}, "
            f"kernel arguments {'kept' if kept else 'LOST'}, ostree fsck {'ok' if sound else 'FAILED'}"
        )
        sysroot.make_removable()
        return walked and kept and sound

    def show_status(self) -> None:
        """5. B's status, asked inside its namespace; its page saved as HTML."""
        b = self.b
        status = b.cli("status")
        self.out.say(
            "5. lanshare status on B (its status page listens on B's loopback, inside the namespace):"
        )
        self.out.show(status.stdout + status.stderr)
        address = (b.state / "status-address").read_text().strip()
        page = self.lan.run("b", [sys.executable, "-c", FETCH, f"http://{address}/"], check=False, timeout=30)
        if page.returncode == 0:
            (self.base / "b-status.html").write_text(page.stdout)
            self.out.say(f"   saved B's status page: {self.base / 'b-status.html'}")
        else:
            self.out.say(f"   could not fetch B's status page: {page.stderr.strip()}")

    def stop(self) -> None:
        """6. A graceful stop (the namespaces are deleted by the caller)."""
        started = [m for m in self.machines if m.proc is not None]
        for machine in started:  # all at once: each one's goodbye takes a moment
            machine.terminate()
        stopped = [f"{m.name} exit {m.wait()}" for m in started]
        if self.origin_proc is not None and self.origin_proc.poll() is None:
            self.origin_proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.origin_proc.wait(10)
        if stopped:
            self.out.say(f"6. stopped with SIGTERM: {', '.join(stopped)}; origin stopped")


# Run inside B's namespace: print the page at argv[1].
FETCH = (
    "import sys, urllib.request; "
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
)


def single_machine_demo(base: Path, out: Narrator) -> bool:
    """Publish the chain locally, fsck it, and print the update path (no LAN)."""
    repo = Repo.init(base / "repo", COLLECTION)
    commits = publish_chain(repo, base)
    for (ref, version, metadata), checksum in zip(CHAIN, commits, strict=True):
        marks = ", ".join(k for k in metadata) or "-"
        out.show(f"{ref:14} v{version}  {checksum[:16]}  {marks}")
    report = fsck(repo)
    out.say(f"lanshare fsck: {report.objects_checked} objects, {len(report.problems)} problems")
    if shutil.which("ostree"):
        result = subprocess.run(["ostree", "fsck", f"--repo={repo.path}"], capture_output=True, text=True)
        out.say(f"ostree fsck: {'ok' if result.returncode == 0 else result.stderr.strip()}")
    path = subprocess.run(
        [sys.executable, "-m", "lanshare.cli", "path", "--repo", str(repo.path), "--from", commits[0]],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out.say(f"lanshare path --from v1 (exit {path.returncode}):")
    out.show(path.stdout + path.stderr)
    return report.ok and path.returncode == 0


def main(argv: list[str] | None = None) -> int:
    """Run the LAN demo (or the single-machine one when namespaces cannot be made); exit 0 if it worked."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0].startswith("-")):
        print("usage: python3 -m lanshare.demo [OUTPUT-DIR]", file=sys.stderr)
        return 2
    base = Path(args[0]).resolve() if args else Path(tempfile.mkdtemp(prefix="lanshare-demo-"))
    if base.exists() and any(base.iterdir()):
        print(f"lanshare demo: {base} is not empty: give a new or empty directory", file=sys.stderr)
        return 2
    base.mkdir(parents=True, exist_ok=True)
    # A SIGTERM to the demo unwinds like Ctrl-C: the daemons stop and the namespaces are deleted.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    out = Narrator()
    try:
        return lan_main(base, out)
    except (KeyboardInterrupt, SystemExit):
        out.say(f"interrupted: daemons stopped, namespaces deleted; what was done is kept in {base}")
        raise


def lan_main(base: Path, out: Narrator) -> int:
    """The LAN demo, or the single-machine one when namespaces cannot be made here."""
    with contextlib.ExitStack() as stack:
        try:
            lan = stack.enter_context(netns_lan_context(3))
        except NetnsUnavailable as e:
            out.say(f"no demo LAN: {e}; showing the single-machine demo instead")
            ok = single_machine_demo(base, out)
            out.say(f"{'done' if ok else 'FAILED'}; repository kept in {base / 'repo'}")
            return 0 if ok else 1
        try:
            ok = LanDemo(lan, base, out).run()
        except DemoFailed as e:
            out.say(f"FAILED: {e}")
            ok = False
    out.say("   namespaces deleted")
    out.say(
        f"{'done: B walked the whole checkpoint chain from its LAN' if ok else 'FAILED'}; "
        f"repositories, configs and logs kept in {base} (origin/, a/, b/, c/ with c/sysroot, b-status.html)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
