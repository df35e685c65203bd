"""Pulls over loopback: lanshare from a lanshare peer, stock ``ostree pull`` from nginx and from lanshare.

Generates one OS-like tree (bench/treegen.py; ``--shape small``: thousands of files, most under
1 KB, the per-object worst case), commits it GPG-signed with ``ostree commit`` into an
archive repository, and serves that one directory with nginx and with two ``lanshare serve``
daemons side by side on 127.0.0.1 (one per lanshare way, so that memory a daemon keeps after
answering batch requests is never charged to the one stock ostree pulls from). Each round pulls
the commit four ways into a fresh, empty archive repository (``ostree init --mode=archive``, not
timed):

* ``lanshare pull`` from the lanshare daemon (batch API), client config with the signing key and an
  already-migrated index, the command pulling alone (no daemon on the client);
* the same ``lanshare pull`` on a client whose own ``lanshare serve`` runs (started before the
  run, not timed, on the empty repository), as on a machine of the fleet: the command hands the
  pull to that daemon over its control socket.  Its CPU-s is the command's plus the daemon's and
  its store workers'; its peak RSS the daemon's;
* ``ostree pull --disable-static-deltas`` from nginx (the baseline), GPG verification on;
* the same ``ostree pull`` from the lanshare daemon (archive layout).

Rounds alternate the order; medians are reported. Nothing is dropped from the page cache: the
served repository was just written, so every run reads it warm. Pulled repositories are deleted
only after the last round (a deletion slows the next run's file creation on ext4), and lanshare
runs from compiled bytecode, as installed. Each run's client is timed as a
child process (wall, CPU-s from ``wait4``, peak RSS from GNU time); the server's CPU time comes
from ``/proc/PID/stat`` and its peak RSS from ``VmHWM`` (reset before each run through
``/proc/PID/clear_refs``). Bytes on the wire are counted on ``lo`` (``/proc/net/dev``: both
directions, with TCP/IP headers), which is exact because the bench re-runs itself in a private
network namespace (``unshare -n``) where nothing else talks; nginx's ``$bytes_sent`` log is summed
as a check. Every pulled repository must pass ``ostree fsck`` (not timed) and hold the very
commit that was served, else the bench fails (exit 1). Goals are printed as PASS or MISS, never
asserted: (a) lanshare←lanshare (handed to the client's daemon; the command alone is reported
beside it) / ostree←nginx wall ≤ 0.5, (b) ostree←lanshare / ostree←nginx
wall ≤ 1.2, (c) the daemon's peak RSS during (b) ≤ 150 MB; (d) bytes are reported, no goal;
(e) lanshare←lanshare / ostree←nginx client CPU-s ≤ 0.6. Each client's context switches
(voluntary + involuntary, from ``wait4``, its children included) are reported per object: threads
handing the GIL to each other show up there.  ``--strace`` adds one untimed lanshare pull under
``strace -f -c`` and prints its futex calls per object.

    python -m bench.bench_pull [--shape os|small] [--files N] [--size BYTES] [--rounds R] [--keep DIR]
                               [--shared-net] [--strace]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.bench_repo import (
    BRANCH as BRANCH,  # re-exported: the smoke test reads bench_pull.BRANCH
)
from bench.bench_repo import (
    GNU_TIME,
    PROJECT_ROOT,
    BenchError,
    Run,
    _read_all,
    add_run_arguments,
    add_tree_arguments,
    parse_bench_args,
    run_timed,
)
from bench.nginx import Nginx, free_port
from bench.signed_source import (
    NETNS_ENV,
    Tools,
    _can_unshare_net,
    _stop_gpg_agent,
    client_tools,
    commit_signed,
    in_private_netns,
    run_and_report,
    verdict,
)
from bench.treegen import DEFAULT_FILES, DEFAULT_SIZE, DEFAULT_SMALL_FILES, SHAPES, TreeStats, generate_shape
from lanshare.index.db import open_index

GOAL_A = 0.5
GOAL_B = 1.2
GOAL_E = 0.6
GOAL_C_MB = 150
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the servers' side, read from /proc ----------------------------------------------------------


def _lo_bytes() -> int:
    """Bytes sent on ``lo`` so far (each loopback packet is sent once and received once)."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, counters = line.partition(":")
            if name.strip() == "lo":
                return int(counters.split()[8])
    raise BenchError("no lo interface in /proc/net/dev")


def _cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU time of process ``pid`` and all its threads (and its reaped children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def _reset_peak_rss(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ≥ 4.0); False if the kernel refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise BenchError(f"no VmHWM for process {pid}")


class LanshareServer:
    """``lanshare serve`` on 127.0.0.1 serving ``repo``; config and state in ``base``.

    Started by the constructor; :meth:`wait_until_listening` gives it its URL (so that several can
    start at once).
    """

    def __init__(self, repo: Path, base: Path, env: dict[str, str], extra: str = "") -> None:
        base.mkdir(parents=True, exist_ok=True)
        self.state = state = base / "state"
        self.config = config = base / "lanshare.toml"
        config.write_text(
            f'[repo]\npath = "{repo}"\n{extra}'
            f'[sharing]\nlisten = "127.0.0.1:{free_port()}"\nadvertise = false\ndiscovery = false\n'
            # Two daemons run side by side: neither may take the default status port.
            f'[status]\nlisten = "127.0.0.1:{free_port()}"\n'
        )
        self.log = base / "serve.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lanshare.cli", "serve", "--config", str(config)],
                cwd=PROJECT_ROOT,
                env={**env, "LANSHARE_STATE_DIR": str(state)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.address = state / "lan-address"  # lanshare.daemon.LAN_ADDRESS_FILE
        self.url = ""

    def wait_until_listening(self) -> None:
        """Wait for the daemon to write its address (once it listens); BenchError if it fails."""
        address = self.address
        deadline = time.monotonic() + 60
        while not address.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"lanshare serve did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.url = f"http://{address.read_text().strip()}/"
        # The control socket opens last of all listeners, once background work is up.
        while not (self.state / "control.sock").exists():  # lanshare.control.SOCKET_NAME
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"lanshare serve opened no control socket:\n{self.log.read_text()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        """The serving process."""
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM (a graceful stop), SIGKILL after 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- one timed pull ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullRun:
    """One timed pull: the client child process, and what the server and ``lo`` saw meanwhile."""

    client: Run
    switches: int  # the client's context switches, voluntary and involuntary, children included
    server_cpu: float
    server_peak_kib: int
    lo_bytes: int
    nginx_responses: int | None = None
    nginx_bytes: int | None = None


@dataclass
class Way:
    """Every run of one way of pulling."""

    key: str
    label: str
    server: str  # "nginx", "lanshare-batch" or "lanshare-archive"
    strace_futex: int | None = None  # futex calls of one untimed run under strace -f -c
    runs: list[PullRun] = field(default_factory=list)

    def median(self, value: Callable[[PullRun], float]) -> float:
        """Median of ``value`` over the runs."""
        return statistics.median(value(r) for r in self.runs)

    @property
    def wall(self) -> float:
        """Median wall-clock seconds of the client."""
        return self.median(lambda r: r.client.wall)

    @property
    def client_peak_mb(self) -> float:
        """Highest client peak RSS over the runs, MB (10^6 bytes)."""
        return max(r.client.maxrss_kib for r in self.runs) * 1024 / 1e6

    @property
    def server_peak_mb(self) -> float:
        """Highest server peak RSS over the runs, MB (10^6 bytes)."""
        return max(r.server_peak_kib for r in self.runs) * 1024 / 1e6


DAEMON_WAY = "lanshare-daemon"
# What `lanshare pull` prints when its daemon ran the pull: the daemon way checks every run for it.
PULLED_BY_DAEMON = "(pulled by the daemon)"

# Each lanshare way has its own daemon (both serving the same directory): memory a daemon keeps
# after answering batch requests must not be charged to the one stock ostree pulls from.
WAYS = (
    ("lanshare", "lanshare pull <- lanshare serve", "lanshare-batch"),
    # The same pull on a machine whose own daemon runs: the command hands it to that daemon.
    (DAEMON_WAY, "lanshare pull, its daemon <- serve", "lanshare-batch"),
    ("ostree-nginx", "ostree pull <- nginx", "nginx"),
    ("ostree-lanshare", "ostree pull <- lanshare serve", "lanshare-archive"),
)


@dataclass
class BenchResult:
    """Everything the bench measured."""

    tree: TreeStats
    shape: str
    archive_bytes: int
    objects: int
    commit: str
    ways: dict[str, Way]
    private_net: bool
    peak_reset: bool
    load: list[tuple[float, float, float]] = field(default_factory=list)  # at start and end of runs
    # Microseconds to create an empty file in a fresh directory, before and after the runs.
    creation_us: list[float] = field(default_factory=list)
    # Wall seconds of `lanshare pull`'s start-up alone: the interpreter and the modules it imports.
    startup: list[float] = field(default_factory=list)
    # The same for a ``lanshare pull`` that hands the pull to the machine's daemon.
    handoff_startup: list[float] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class _Runner:
    """Sets up a fresh client repository for one way, runs the timed pull, checks the result."""

    def __init__(self, tools: Tools, workdir: Path, keyring: Path, index_template: Path) -> None:
        self.tools = tools
        self.workdir = workdir
        self.keyring = keyring
        self.index_template = index_template

    def prepare(self, way: Way, url: str, round_no: int) -> tuple[Path, Callable[[], Run]]:
        """A fresh archive repository set up to pull from ``url`` (not timed), and the timed pull."""
        repo, cmd, env = self.command(way, url, round_no)
        if way.key != DAEMON_WAY:
            return repo, lambda: run_timed(cmd, env)
        daemon = self.start_client_daemon(repo, cmd, env)
        daemon.wait_until_listening()

        def handed_to_daemon() -> Run:
            # The command's wall; the CPU of the command, the daemon and its store workers (reaped
            # before the daemon answers); the daemon's peak RSS, the larger of the two.
            before = _cpu_seconds(daemon.pid, children=True)
            run = run_timed(cmd, env)
            spent = _cpu_seconds(daemon.pid, children=True) - before
            peak = _peak_rss_kib(daemon.pid)
            daemon.stop()  # not timed
            if PULLED_BY_DAEMON not in run.stdout:
                raise BenchError(f"the daemon did not run the pull: {run.stdout}")
            return Run(run.wall, run.cpu + spent, max(run.maxrss_kib, peak), run.stdout)

        return repo, handed_to_daemon

    def start_client_daemon(
        self, repo: Path, cmd: list[str | Path], env: dict[str, str] | None
    ) -> LanshareServer:
        """Start the client machine's own ``lanshare serve`` on its empty repository (not timed; the
        caller waits for it), and point the client's ``cmd`` and ``env`` at it."""
        assert env is not None
        daemon = LanshareServer(repo, repo.parent / "daemon", self.tools.env, self._client_config(repo))
        # The command reads the daemon's own config file: with another, it would pull itself.
        cmd[cmd.index("--config") + 1] = daemon.config
        env["LANSHARE_STATE_DIR"] = str(daemon.state)
        return daemon

    def _client_config(self, repo: Path) -> str:
        """The client's config beyond ``[repo]``: its migrated index and the publisher's key."""
        return (
            f'[database]\nurl = "sqlite:///{repo.parent / "index.sqlite"}"\n'
            f'[trust]\ngpg_keyring = "{self.keyring}"\n'
        )

    def command(
        self, way: Way, url: str, round_no: int | str
    ) -> tuple[Path, list[str | Path], dict[str, str] | None]:
        """A fresh archive repository set up to pull from ``url`` (not timed), and the pull's argv."""
        run_dir = self.workdir / f"round{round_no}-{way.key}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        repo = run_dir / "repo"
        self.tools.ostree_cmd("init", f"--repo={repo}", "--mode=archive")
        if way.key in ("lanshare", DAEMON_WAY):
            shutil.copyfile(self.index_template, run_dir / "index.sqlite")
            config = run_dir / "lanshare.toml"
            config.write_text(f'[repo]\npath = "{repo}"\n{self._client_config(repo)}')
            cmd: list[str | Path] = [*self.tools.lanshare, "pull", BRANCH, "--from", url, "--config", config]
            return repo, cmd, dict(self.tools.env)
        self.tools.ostree_cmd(
            "remote", "add", f"--repo={repo}", f"--gpg-import={self.keyring}", "origin", url
        )
        pull: list[str | Path] = [
            self.tools.ostree, "pull", f"--repo={repo}", "--disable-static-deltas", "origin", BRANCH
        ]  # fmt: skip
        return repo, pull, None

    def check(self, way: Way, repo: Path, commit: str) -> str | None:
        """Why the pulled repository is wrong (fsck failure, another commit), or None."""
        ref = BRANCH if way.key in ("lanshare", DAEMON_WAY) else f"origin:{BRANCH}"
        try:
            pulled = self.tools.ostree_cmd("rev-parse", f"--repo={repo}", ref).strip()
            self.tools.ostree_cmd("fsck", f"--repo={repo}")
        except BenchError as e:
            return f"{way.label}: {e}"
        if pulled != commit:
            return f"{way.label}: pulled {pulled}, served {commit}"
        return None


# What `lanshare pull` runs before its first request: the interpreter's start, then the modules a
# pull imports, with the collector off as lanshare.cli imports them.  Part of the pull's wall.
STARTUP_CMD = (
    sys.executable,
    "-c",
    "import gc; gc.disable(); "
    "import lanshare.commands.pull, lanshare.index.sync, lanshare.ostree.repo_summary",
)

# What a `lanshare pull` that hands its pull to the running daemon imports.
HANDOFF_STARTUP_CMD = (
    sys.executable,
    "-c",
    "import gc; gc.disable(); import lanshare.commands.pull, lanshare.control.client",
)


def file_creation_us(directory: Path, count: int = 2000) -> float:
    """Microseconds per empty file created in the new ``directory`` (kept: deleting is what slows
    ext4's inode allocation, for minutes, so this bench deletes nothing until its runs are over)."""
    directory.mkdir()
    started = time.perf_counter()
    for i in range(count):
        os.close(os.open(directory / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return (time.perf_counter() - started) / count * 1e6


def _children_switches() -> int:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_nvcsw + usage.ru_nivcsw


def _timed_pull(step: Callable[[], Run], server_pid: int, nginx: Nginx | None) -> tuple[PullRun, bool]:
    reset = _reset_peak_rss(server_pid)
    offset = nginx.log_offset() if nginx else 0
    os.sync()  # the client's fresh repository and the last run's writes must not be charged here
    cpu, lo = _cpu_seconds(server_pid), _lo_bytes()
    # Reaped children's totals: the client (through GNU time) is the only child reaped meanwhile.
    switches = _children_switches()
    client = step()
    switches = _children_switches() - switches
    lo = _lo_bytes() - lo
    cpu = _cpu_seconds(server_pid) - cpu
    responses = sent = None
    if nginx:
        responses, sent = nginx.bytes_sent_since(offset)
    return PullRun(client, switches, cpu, _peak_rss_kib(server_pid), lo, responses, sent), reset


def _strace_futex(cmd: Sequence[str | Path], env: dict[str, str] | None, out: Path) -> int:
    """Futex calls of ``cmd`` and its threads and children, from ``strace -f -c``."""
    proc = subprocess.run(
        ["strace", "-f", "-c", "-o", str(out), *map(str, cmd)], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise BenchError(f"strace {' '.join(map(str, cmd))}: {proc.stderr.strip()[-500:]}")
    for line in out.read_text().splitlines():
        fields = line.split()
        if fields and fields[-1] == "futex":
            return int(fields[3])
    return 0


def run_bench(
    workdir: Path,
    files: int = DEFAULT_FILES,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    rounds: int = 3,
    keep: bool = False,
    log: Callable[[str], None] = lambda _: None,
    shape: str = "os",
    strace: bool = False,
    store_workers: int | None = None,
) -> BenchResult:
    """Generate, commit and serve the tree under ``workdir``, and measure every way of pulling it."""
    tools = client_tools(store_workers)
    tree = workdir / "tree"
    for stale in ("tree", "gpg", "served", "nginx", "lanshare-batch", "lanshare-archive"):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    what = f"{size / 1e6:.0f} MB" if shape == "os" else "most under 1 KB"
    log(f"generating {files} files, {what} (shape {shape}, seed {seed}) ...")
    stats = generate_shape(tree, shape, files, size, seed)
    _read_all(tree)
    gpg_home = workdir / "gpg"
    keyring = workdir / "publisher.gpg"
    source = workdir / "served"
    servers: list[Nginx | LanshareServer] = []
    try:
        log("committing with ostree commit (GPG-signed) and updating the summary ...")
        signed = commit_signed(tools, tree, gpg_home, keyring, source)
        commit, objects, archive_bytes = signed.commit, signed.objects, signed.archive_bytes

        by_name: dict[str, Nginx | LanshareServer] = {}
        for name in ("lanshare-batch", "lanshare-archive"):
            by_name[name] = LanshareServer(source, workdir / name, tools.env)
            servers.append(by_name[name])
        by_name["nginx"] = nginx = Nginx(source, workdir / "nginx")
        servers.append(nginx)
        # While the daemons start: the client's index, migrated once (a lanshare machine has one).
        index_template = workdir / "index-template.sqlite"
        open_index(f"sqlite:///{index_template}").dispose()
        for server in servers:
            if isinstance(server, LanshareServer):
                server.wait_until_listening()
        log(f"serving {commit} ({objects} objects, {archive_bytes / 1e6:.1f} MB): "
            + ", ".join(f"{name} {server.url}" for name, server in by_name.items()))  # fmt: skip

        ways = {key: Way(key, label, server) for key, label, server in WAYS}
        runner = _Runner(tools, workdir, keyring, index_template)
        result = BenchResult(
            stats, shape, archive_bytes, objects, commit, ways, bool(os.environ.get(NETNS_ENV)), True
        )
        result.load.append(os.getloadavg())
        result.creation_us.append(file_creation_us(workdir / "creation-before"))
        pulled: list[Path] = []
        for round_no in range(rounds):
            order = list(ways.values()) if round_no % 2 == 0 else list(ways.values())[::-1]
            log(f"round {round_no + 1}/{rounds}: " + ", ".join(w.key for w in order))
            for way in order:
                server = by_name[way.server]
                repo, step = runner.prepare(way, server.url, round_no)
                run, reset = _timed_pull(step, server.pid, nginx if server is nginx else None)
                result.peak_reset &= reset
                way.runs.append(run)
                log(
                    f"  {way.key:<16} {run.client.wall:6.2f} s  {run.client.cpu:6.2f} CPU-s  "
                    f"server {run.server_cpu:5.2f} CPU-s {run.server_peak_kib / 1024:5.0f} MiB  "
                    f"{run.lo_bytes / 1e6:7.1f} MB on lo"
                )
                problem = runner.check(way, repo, commit)
                if problem:
                    result.failures.append(problem)
                elif round_no == 0:
                    result.checks.append(way.key)
                pulled.append(repo.parent)
        result.load.append(os.getloadavg())
        result.creation_us.append(file_creation_us(workdir / "creation-after"))
        result.startup = [run_timed([*STARTUP_CMD], tools.env).wall for _ in range(rounds)]
        result.handoff_startup = [run_timed([*HANDOFF_STARTUP_CMD], tools.env).wall for _ in range(rounds)]
        # Removed only now: on ext4, creating files within a minute of deleting thousands makes
        # inode allocation skip the recently deleted ones, slowly (`perf`: find_inode_bit /
        # recently_deleted took ~60% of a core), which would be charged to whichever way ran next.
        for run_dir in pulled if not keep else []:
            shutil.rmtree(run_dir)
        if strace:
            for key in ("lanshare", "ostree-nginx"):
                way = ways[key]
                repo, cmd, env = runner.command(way, by_name[way.server].url, "strace")
                way.strace_futex = _strace_futex(cmd, env, workdir / f"strace-{key}.txt")
                log(f"  {key:<16} under strace -f -c: {way.strace_futex} futex calls")
                shutil.rmtree(repo.parent)
        return result
    finally:
        for server in servers:
            server.stop()
        _stop_gpg_agent(gpg_home)


def _switches(way: Way, objects: int) -> str:
    """Context switches per object; not for the daemon way (its workers' are not visible here)."""
    if way.key == DAEMON_WAY:
        return "-"
    return f"{way.median(lambda r: r.switches) / objects:.2f}"


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def format_report(result: BenchResult, rounds: int) -> str:
    """The table of every way of pulling, then the four ratios against their goals."""
    t, w = result.tree, result.ways
    lines = [
        f"tree ({result.shape} shape): {t.files} files ({t.total_bytes / 1e6:.1f} MB), "
        f"{t.symlinks} symlinks, {t.dirs} dirs; "
        f"archive repository: {result.objects} objects, {_mb(result.archive_bytes)}",
        f"served commit: {result.commit} (GPG-signed; both clients verify the signature)",
        f"every pulled repository passed ostree fsck and holds that commit: "
        f"{'yes' if not result.failures else 'NO'}",
        "",
        f"median of {rounds} rounds, order alternating; fresh empty target repository per run; page "
        f"cache not dropped (warm); {os.cpu_count()} CPUs shared with other work, load average "
        + " -> ".join("/".join(f"{x:.1f}" for x in load) for load in result.load)
        + " (1/5/15 min, before -> after the runs)",
        "creating an empty file: "
        + " -> ".join(f"{us:.0f} us" for us in result.creation_us)
        + " (before -> after the runs; tens of us on a quiet ext4, far more within minutes of"
        " deleting many files, which slows every way)",
        "client: wall, CPU-s (wait4), peak RSS ("
        + ("GNU time" if GNU_TIME else "wait4, upper bound")
        + "); server: CPU-s (/proc/PID/stat), peak RSS (VmHWM"
        + (", reset before each run)" if result.peak_reset else ", since start: clear_refs refused)"),
        "bytes: on lo, both directions incl. TCP/IP headers, "
        + (
            "private network namespace (nothing else on lo)"
            if result.private_net
            else "SHARED loopback (other traffic counted too)"
        ),
    ]
    header = (
        f"{'way':<31} {'wall s':>7} {'CPU-s':>6} {'peak RSS':>9} {'srv CPU-s':>9} {'srv RSS':>8} "
        f"{'bytes on lo':>12} {'nginx $bytes_sent':>18} {'ctx sw/obj':>10}"
    )
    lines += ["", header, "-" * len(header)]
    for way in w.values():
        nginx_bytes = (
            f"{_mb(way.median(lambda r: r.nginx_bytes or 0))} ({way.runs[0].nginx_responses} resp)"
            if way.server == "nginx"
            else "-"
        )
        lines.append(
            f"{way.label:<31} {way.wall:>7.2f} {way.median(lambda r: r.client.cpu):>6.2f} "
            f"{way.client_peak_mb:>6.0f} MB {way.median(lambda r: r.server_cpu):>9.2f} "
            f"{way.server_peak_mb:>5.0f} MB {_mb(way.median(lambda r: r.lo_bytes)):>12} {nginx_bytes:>18} "
            f"{_switches(way, result.objects):>10}"
        )
    startup = statistics.median(result.startup) if result.startup else float("nan")
    handoff = statistics.median(result.handoff_startup) if result.handoff_startup else float("nan")
    lines += [
        f"of lanshare pull's {w['lanshare'].wall:.2f} s, {startup:.2f} s is start-up: the interpreter and "
        "the modules a pull imports (aiohttp, SQLAlchemy...), timed alone, median",
        f"handed to the client's own daemon ({w[DAEMON_WAY].wall:.2f} s), the command's start-up is "
        f"{handoff:.2f} s; its CPU-s and peak RSS include the daemon's and its workers' (the daemon "
        "was started, not timed, before each run)",
    ]
    lines.append("")
    lines.append("all runs, wall s: " + "; ".join(
        f"{way.key} " + " ".join(f"{r.client.wall:.2f}" for r in way.runs) for way in w.values()
    ))  # fmt: skip
    a = w[DAEMON_WAY].wall / w["ostree-nginx"].wall
    a_alone = w["lanshare"].wall / w["ostree-nginx"].wall
    b = w["ostree-lanshare"].wall / w["ostree-nginx"].wall
    c = w["ostree-lanshare"].server_peak_mb
    lo = {key: way.median(lambda r: r.lo_bytes) for key, way in w.items()}

    def cpu(key: str) -> float:
        return w[key].median(lambda r: r.client.cpu)

    base_cpu = cpu("ostree-nginx")

    lines += [
        "",
        f"(a) lanshare pull <- lanshare / ostree pull <- nginx, wall, on a machine running lanshare serve "
        f"(the command hands the pull to it): {a:.2f} (goal <= {GOAL_A}) {verdict(a <= GOAL_A)}",
        f"    the same, the command pulling alone (no daemon on the client): {a_alone:.2f} "
        f"{verdict(a_alone <= GOAL_A)}",
        f"(b) ostree pull <- lanshare / ostree pull <- nginx, wall: {b:.2f} (goal <= {GOAL_B}) "
        f"{verdict(b <= GOAL_B)}",
        f"    client CPU-s, same ratios (no goal; steadier than wall on a loaded machine): "
        f"(a) {cpu(DAEMON_WAY) / base_cpu:.2f}, (b) {cpu('ostree-lanshare') / base_cpu:.2f}",
        f"(c) lanshare serve peak RSS during (b): {c:.0f} MB (goal <= {GOAL_C_MB} MB) "
        f"{verdict(c <= GOAL_C_MB)}",
        f"(d) bytes on lo: (a) lanshare pull {_mb(lo['lanshare'])} vs (b) ostree pull from lanshare "
        f"{_mb(lo['ostree-lanshare'])} (from nginx {_mb(lo['ostree-nginx'])}): "
        f"{lo['lanshare'] / lo['ostree-lanshare']:.2f} (no goal)",
    ]
    e, e_alone = cpu(DAEMON_WAY) / base_cpu, cpu("lanshare") / base_cpu
    lines += [
        f"(e) lanshare pull <- lanshare / ostree pull <- nginx, client CPU-s (command + daemon + workers): "
        f"{e:.2f} (goal <= {GOAL_E}) {verdict(e <= GOAL_E)}",
        f"    the same, the command pulling alone: {e_alone:.2f} {verdict(e_alone <= GOAL_E)}",
    ]
    for key in ("lanshare", "ostree-nginx"):
        if (futex := w[key].strace_futex) is not None:
            lines.append(
                f"    {w[key].label}: {futex} futex calls under strace -f -c, "
                f"{futex / result.objects:.2f} per object"
            )
    lines += [f"FAILED: {failure}" for failure in result.failures]
    return "\n".join(lines)


def add_store_workers_argument(parser: argparse.ArgumentParser) -> None:
    """``--store-workers N``: the lanshare client's worker processes (0: threads), to compare."""
    parser.add_argument(
        "--store-workers",
        type=int,
        metavar="N",
        help="lanshare clients verify and store in N worker processes (0: in threads; default: one per core)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench and print the table; exit 1 if a pull failed or a pulled repository is wrong."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_tree_arguments(parser)
    parser.add_argument(
        "--shape",
        choices=SHAPES,
        default="os",
        help=f"os-like tree, or many small files (default --files {DEFAULT_SMALL_FILES} for small)",
    )
    parser.add_argument(
        "--strace", action="store_true", help="also count futex calls of one untimed pull each way"
    )
    add_store_workers_argument(parser)
    add_run_arguments(parser, each="way of pulling", kept="the repositories")
    parser.add_argument(
        "--shared-net",
        action="store_true",
        help="stay in this network namespace (bytes on lo then include any other loopback traffic)",
    )
    args = parse_bench_args(parser, argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if args.shape == "small" and not any(a == "--files" or a.startswith("--files=") for a in argv):
        args.files = DEFAULT_SMALL_FILES
    if args.strace and not shutil.which("strace"):
        parser.error("--strace needs strace (apt-get install strace)")
    if not args.shared_net and not os.environ.get(NETNS_ENV):
        if _can_unshare_net():
            return in_private_netns("bench.bench_pull", argv)
        print("bench: cannot unshare -n here: bytes on lo include other loopback traffic", file=sys.stderr)

    def measure(workdir: Path) -> BenchResult:
        return run_bench(
            workdir, args.files, args.size, args.seed, args.rounds, bool(args.keep), print,
            args.shape, args.strace, args.store_workers,
        )  # fmt: skip

    return run_and_report(args.keep, "bench-pull-", measure, lambda r: format_report(r, args.rounds))


if __name__ == "__main__":
    sys.exit(main())
