"""A classroom: N machines pull the same commit at once from one server, over loopback.

Generates a tree (bench/treegen.py; ``--shape small`` by default: the per-object worst case),
commits it GPG-signed with ``ostree commit`` and serves it with one ``lanshare serve`` and with
nginx, side by side on 127.0.0.1. Each round starts N clients at the same instant, each into its
own fresh, empty archive repository (made before the clock starts), two ways:

* N ``lanshare pull`` from the one ``lanshare serve`` (batch API; each client with the signing key
  and an already-migrated index, as on a machine running lanshare);
* the same N ``lanshare pull`` on machines whose own ``lanshare serve`` runs (N client daemons,
  started before the clock): each command hands its pull to its daemon, as on a fleet;
* N ``ostree pull --disable-static-deltas`` from nginx (the baseline), GPG verification on.

Reported per way (medians over rounds): the total wall time (first start to last exit), the
clients' CPU-s summed (``wait4``, their children included), the clients' context switches per
object, and the server's CPU-s, peak RSS (``VmHWM``, reset before each run) and context switches
(every thread's, from ``/proc/PID/task/*/status``).  Every client runs on this same machine, so
the clients' CPU competes with the server's: the total wall is a classroom squeezed onto two
cores, not a LAN.  Every pulled repository must pass ``ostree fsck`` and hold the served commit,
else exit 1.  Goals, printed as PASS or MISS, never asserted: (f) lanshare (handed to the client
daemons; the commands alone beside it) / nginx total wall ≤ 0.5; (g) the daemon's peak RSS ≤ 200 MB.

    python -m bench.bench_fanout [--clients N] [--shape os|small] [--files N] [--size BYTES]
                                 [--rounds R] [--keep DIR] [--shared-net]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.bench_pull import (
    DAEMON_WAY,
    PULLED_BY_DAEMON,
    LanshareServer,
    Way,
    _cpu_seconds,
    _peak_rss_kib,
    _reset_peak_rss,
    _Runner,
    add_store_workers_argument,
)
from bench.bench_repo import BenchError, _read_all
from bench.nginx import Nginx
from bench.signed_source import (
    NETNS_ENV,
    _can_unshare_net,
    _stop_gpg_agent,
    client_tools,
    commit_signed,
    in_private_netns,
    run_and_report,
    verdict,
)
from bench.treegen import DEFAULT_SIZE, DEFAULT_SMALL_FILES, SHAPES, TreeStats, generate_shape
from lanshare.index.db import open_index

GOAL_F = 0.5
GOAL_G_MB = 200
DEFAULT_CLIENTS = 8
WAYS = (
    ("lanshare", "lanshare pull <- lanshare serve", "lanshare-batch"),
    (DAEMON_WAY, "lanshare pull, its daemon <- serve", "lanshare-batch"),
    ("ostree-nginx", "ostree pull <- nginx", "nginx"),
)


def _server_switches(pid: int) -> int:
    """Context switches (voluntary and not) of every live thread of process ``pid``."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return total


@dataclass(frozen=True)
class FanoutRun:
    """N clients started at once: total wall, their summed CPU and switches, the server meanwhile."""

    wall: float
    client_cpu: float
    client_switches: int
    server_cpu: float
    server_peak_kib: int
    server_switches: int


@dataclass
class FanoutWay:
    """Every run of one way."""

    key: str
    label: str
    server: str
    runs: list[FanoutRun] = field(default_factory=list)

    def median(self, value: Callable[[FanoutRun], float]) -> float:
        """Median of ``value`` over the runs."""
        return statistics.median(value(r) for r in self.runs)


@dataclass
class FanoutResult:
    """Everything the bench measured."""

    tree: TreeStats
    shape: str
    clients: int
    objects: int
    archive_bytes: int
    commit: str
    ways: dict[str, FanoutWay]
    load: list[tuple[float, float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _run_all(
    cmds: list[tuple[list[str | Path], dict[str, str] | None]], logs: Path
) -> tuple[float, float, int]:
    """Start every command at once; (wall until the last exits, CPU-s summed, switches summed)."""
    procs = []
    start = time.perf_counter()
    for i, (cmd, env) in enumerate(cmds):
        out = open(logs / f"client{i}.log", "wb")  # noqa: SIM115 - closed below, after the wait
        procs.append((subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=out, env=env), out))
    cpu, switches, failed = 0.0, 0, []
    for i, (proc, out) in enumerate(procs):
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.close()
        cpu += usage.ru_utime + usage.ru_stime
        switches += usage.ru_nvcsw + usage.ru_nivcsw
        if proc.returncode != 0:
            failed.append(
                f"client {i} exited with {proc.returncode}: {(logs / f'client{i}.log').read_text()[-800:]}"
            )
    wall = time.perf_counter() - start
    if failed:
        raise BenchError("\n".join(failed))
    return wall, cpu, switches


def _client_daemons(
    runner: _Runner, prepared: list[tuple[Path, list[str | Path], dict[str, str] | None]]
) -> list[LanshareServer]:
    """Each client machine's own daemon, all started at once, then waited for (not timed)."""
    daemons = [runner.start_client_daemon(repo, cmd, env) for repo, cmd, env in prepared]
    try:
        for daemon in daemons:
            daemon.wait_until_listening()
    except BaseException:
        for daemon in daemons:
            daemon.stop()
        raise
    return daemons


def run_fanout(
    workdir: Path,
    clients: int = DEFAULT_CLIENTS,
    shape: str = "small",
    files: int = DEFAULT_SMALL_FILES,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    rounds: int = 1,
    log: Callable[[str], None] = lambda _: None,
    store_workers: int | None = None,
    keep: bool = False,
) -> FanoutResult:
    """Generate, commit and serve the tree under ``workdir``; measure N clients at once, each way."""
    tools = client_tools(store_workers)
    tree = workdir / "tree"
    for stale in ("tree", "gpg", "served", "nginx", "lanshare-batch"):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    log(f"generating {files} files ({shape} shape, seed {seed}) ...")
    stats = generate_shape(tree, shape, files, size, seed)
    _read_all(tree)
    gpg_home, keyring, source = workdir / "gpg", workdir / "publisher.gpg", workdir / "served"
    servers: list[Nginx | LanshareServer] = []
    try:
        signed = commit_signed(tools, tree, gpg_home, keyring, source)
        commit, objects, archive_bytes = signed.commit, signed.objects, signed.archive_bytes
        lan = LanshareServer(source, workdir / "lanshare-batch", tools.env)
        servers.append(lan)
        nginx = Nginx(source, workdir / "nginx")
        servers.append(nginx)
        by_name: dict[str, Nginx | LanshareServer] = {"lanshare-batch": lan, "nginx": nginx}
        index_template = workdir / "index-template.sqlite"
        open_index(f"sqlite:///{index_template}").dispose()
        lan.wait_until_listening()
        log(
            f"serving {commit} ({objects} objects, {archive_bytes / 1e6:.1f} MB) to {clients} clients at once"
        )
        runner = _Runner(tools, workdir, keyring, index_template)
        ways = {key: FanoutWay(key, label, server) for key, label, server in WAYS}
        result = FanoutResult(stats, shape, clients, objects, archive_bytes, commit, ways)
        result.load.append(os.getloadavg())
        pulled: list[Path] = []
        for round_no in range(rounds):
            order = list(ways.values()) if round_no % 2 == 0 else list(ways.values())[::-1]
            for way in order:
                server = by_name[way.server]
                pid = server.pid
                prepared = [
                    runner.command(Way(way.key, way.label, way.server), server.url, f"{round_no}-{i}")
                    for i in range(clients)
                ]
                logs = workdir / f"logs-{round_no}-{way.key}"
                logs.mkdir(exist_ok=True)
                daemons = _client_daemons(runner, prepared) if way.key == DAEMON_WAY else []
                os.sync()
                _reset_peak_rss(pid)
                cpu, switches = _cpu_seconds(pid), _server_switches(pid)
                daemons_cpu = [_cpu_seconds(d.pid, children=True) for d in daemons]
                wall, client_cpu, client_switches = _run_all([(cmd, env) for _, cmd, env in prepared], logs)
                for daemon, before in zip(daemons, daemons_cpu, strict=True):
                    client_cpu += _cpu_seconds(daemon.pid, children=True) - before
                    daemon.stop()
                for i in range(clients if daemons else 0):
                    if PULLED_BY_DAEMON not in (logs / f"client{i}.log").read_text():
                        raise BenchError(f"client {i}'s daemon did not run its pull: see {logs}")
                run = FanoutRun(
                    wall, client_cpu, client_switches, _cpu_seconds(pid) - cpu, _peak_rss_kib(pid),
                    _server_switches(pid) - switches,
                )  # fmt: skip
                way.runs.append(run)
                log(
                    f"  {clients} x {way.key:<14} {wall:6.2f} s  clients {client_cpu:6.2f} CPU-s  "
                    f"server {run.server_cpu:5.2f} CPU-s {run.server_peak_kib / 1024:5.0f} MiB"
                )
                for i, (repo, _, _) in enumerate(prepared):
                    problem = runner.check(Way(way.key, way.label, way.server), repo, commit)
                    if problem:
                        result.failures.append(f"client {i}: {problem}")
                    pulled.append(repo.parent)
        result.load.append(os.getloadavg())
        # Only now (see bench_pull): deleting thousands of files slows the next run's creations.
        for run_dir in pulled if not keep else []:
            shutil.rmtree(run_dir)
        return result
    finally:
        for server in servers:
            server.stop()
        _stop_gpg_agent(gpg_home)


def format_report(result: FanoutResult, rounds: int) -> str:
    """The table of both ways, then the two goals."""
    t, w, n = result.tree, result.ways, result.clients
    lines = [
        f"tree ({result.shape} shape): {t.files} files ({t.total_bytes / 1e6:.1f} MB); archive repository: "
        f"{result.objects} objects, {result.archive_bytes / 1e6:.1f} MB",
        f"served commit: {result.commit} (GPG-signed; every client verifies the signature)",
        "every pulled repository passed ostree fsck and holds that commit: "
        + ("yes" if not result.failures else "NO"),
        "",
        f"{n} clients started at once, median of {rounds} rounds; clients and servers share "
        f"{os.cpu_count()} CPUs with other work, load average "
        + " -> ".join("/".join(f"{x:.1f}" for x in load) for load in result.load)
        + " (1/5/15 min, before -> after)",
    ]
    header = (
        f"{'way':<36} {'total wall s':>12} {'clients CPU-s':>13} {'ctx sw/obj':>10} "
        f"{'srv CPU-s':>9} {'srv peak RSS':>12} {'srv ctx sw':>10}"
    )
    lines += ["", header, "-" * len(header)]
    for way in w.values():
        lines.append(
            f"{f'{n} x {way.label}':<36} {way.median(lambda r: r.wall):>12.2f} "
            f"{way.median(lambda r: r.client_cpu):>13.2f} "
            f"{way.median(lambda r: r.client_switches) / (n * result.objects):>10.2f} "
            f"{way.median(lambda r: r.server_cpu):>9.2f} "
            f"{max(r.server_peak_kib for r in way.runs) * 1024 / 1e6:>9.0f} MB "
            f"{way.median(lambda r: r.server_switches):>10.0f}"
        )

    def ratio(key: str, value: Callable[[FanoutRun], float]) -> float:
        return w[key].median(value) / w["ostree-nginx"].median(value)

    f, f_alone = ratio(DAEMON_WAY, lambda r: r.wall), ratio("lanshare", lambda r: r.wall)
    g = max(r.server_peak_kib for w_ in (w["lanshare"], w[DAEMON_WAY]) for r in w_.runs) * 1024 / 1e6
    cpu, cpu_alone = ratio(DAEMON_WAY, lambda r: r.client_cpu), ratio("lanshare", lambda r: r.client_cpu)
    lines += [
        "(the daemon way's clients' CPU-s include the client daemons' and their workers'; its ctx sw/obj "
        "counts the commands only)",
        "",
        f"(f) {n} x lanshare <- lanshare serve / {n} x ostree <- nginx, total wall, on machines running "
        f"lanshare serve (each command hands its pull to it): {f:.2f} (goal <= {GOAL_F}) "
        f"{verdict(f <= GOAL_F)}",
        f"    the same, the commands pulling alone (no daemon on the clients): {f_alone:.2f} "
        f"{verdict(f_alone <= GOAL_F)}",
        f"    clients' CPU-s, same ratios (no goal): {cpu:.2f}; alone {cpu_alone:.2f}",
        f"(g) lanshare serve peak RSS: {g:.0f} MB (goal <= {GOAL_G_MB} MB) {verdict(g <= GOAL_G_MB)}",
    ]
    lines += [f"FAILED: {failure}" for failure in result.failures]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench and print the table; exit 1 if a pull failed or a pulled repository is wrong."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="clients pulling at once")
    parser.add_argument("--shape", choices=SHAPES, default="small", help="the generated tree's shape")
    parser.add_argument("--files", type=int, default=DEFAULT_SMALL_FILES, help="entries in the tree")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="bytes of file data (os shape)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tree generator")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each way (median)")
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="work in DIR and keep it, every pulled repository included"
    )
    parser.add_argument("--shared-net", action="store_true", help="stay in this network namespace")
    add_store_workers_argument(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.clients < 1:
        parser.error("--rounds and --clients must be at least 1")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not args.shared_net and not os.environ.get(NETNS_ENV) and _can_unshare_net():
        return in_private_netns("bench.bench_fanout", argv)

    def measure(workdir: Path) -> FanoutResult:
        return run_fanout(
            workdir, args.clients, args.shape, args.files, args.size, args.seed, args.rounds, print,
            args.store_workers, bool(args.keep),
        )  # fmt: skip

    return run_and_report(args.keep, "bench-fanout-", measure, lambda r: format_report(r, args.rounds))


if __name__ == "__main__":
    sys.exit(main())
