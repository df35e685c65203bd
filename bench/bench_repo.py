"""``lanshare commit`` and ``lanshare fsck`` against ``ostree commit`` and ``ostree fsck``, same run.

Generates one OS-like tree (bench/treegen.py), then times each tool as a child process: wall clock,
CPU seconds (user + system of the child and its threads and children, from ``wait4``) and peak
RSS. Each measurement runs ``--rounds`` times, alternating which tool goes first, and the median is
reported. Both commits must produce the same checksum and every fsck must pass, else exit 1.
The goal (lanshare/ostree wall time ≤ 1.5) is printed as PASS or MISS, never asserted.

    python -m bench.bench_repo [--files N] [--size BYTES] [--rounds R] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from bench.treegen import DEFAULT_FILES, DEFAULT_SIZE, TreeStats, generate_tree

GOAL = 1.5
BRANCH = "bench/tree"
TIMESTAMP = 1_700_000_000
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def compile_checkout() -> None:
    """Write the checkout's .pyc files now (not timed), as installing a wheel does."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            str(PROJECT_ROOT / "lanshare"),
            str(PROJECT_ROOT / "migrations"),
        ],
        check=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    )


class BenchError(Exception):
    """A tool failed or the two tools disagree: the bench result is void."""


@dataclass(frozen=True)
class Run:
    """One timed child process."""

    wall: float
    cpu: float
    maxrss_kib: int
    stdout: str


@dataclass
class Operation:
    """Every run of one operation by both tools."""

    name: str
    ostree: list[Run] = field(default_factory=list)
    lanshare: list[Run] = field(default_factory=list)

    def runs(self, tool: str) -> list[Run]:
        """The runs of ``tool`` ("ostree" or "lanshare")."""
        return {"ostree": self.ostree, "lanshare": self.lanshare}[tool]

    def wall(self, tool: str) -> float:
        """Median wall-clock seconds of ``tool``."""
        return statistics.median(r.wall for r in self.runs(tool))

    def cpu(self, tool: str) -> float:
        """Median CPU seconds of ``tool``."""
        return statistics.median(r.cpu for r in self.runs(tool))

    def peak_rss_mib(self, tool: str) -> float:
        """Highest peak RSS of ``tool`` over all runs, in MiB."""
        return max(r.maxrss_kib for r in self.runs(tool)) / 1024

    @property
    def ratio(self) -> float:
        """lanshare wall time over ostree wall time (medians)."""
        return self.wall("lanshare") / self.wall("ostree")


@dataclass
class BenchResult:
    """Everything the bench measured."""

    tree: TreeStats
    archive_bytes: int
    ostree_commit: str
    lanshare_commit: str
    operations: list[Operation]


# GNU time reports the child's own peak RSS. wait4()'s ru_maxrss cannot: a child spawned from
# this process starts with our RSS as its high-water mark (Linux keeps it across exec).
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run_timed(cmd: Sequence[str | Path], env: dict[str, str] | None = None) -> Run:
    """Run ``cmd`` to completion and measure it; raises BenchError on a non-zero exit."""
    argv = [str(c) for c in cmd]
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile() as rss,
    ):
        wrapped = [GNU_TIME, "--format=%M", f"--output={rss.name}", *argv] if GNU_TIME else argv
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=out, stderr=err, env=env)
        # wait4 gives the child's CPU time including its threads and reaped children.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        if proc.returncode != 0:
            stderr = err.read().decode(errors="replace").strip()
            raise BenchError(f"{' '.join(argv)} exited with {proc.returncode}:\n{stderr}\n{stdout}")
        maxrss = int(rss.read().split()[-1]) if GNU_TIME else usage.ru_maxrss
    return Run(wall, usage.ru_utime + usage.ru_stime, maxrss, stdout)


class Commands:
    """The ``ostree`` CLI and this checkout's ``lanshare``, with the environment to run it in."""

    def __init__(self) -> None:
        ostree = shutil.which("ostree")
        if ostree is None:
            raise BenchError("the ostree CLI is not installed (apt-get install ostree)")
        self.ostree = ostree
        # No LANSHARE_* setting of the caller may change what the timed lanshare does; and it runs
        # from compiled bytecode, as an installed lanshare does (pip writes the .pyc files), even
        # where the caller's environment says PYTHONDONTWRITEBYTECODE: otherwise every timed run
        # recompiles each module it imports (~0.3 s of a pull's start-up).
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("LANSHARE_") and k != "PYTHONDONTWRITEBYTECODE"
        }
        compile_checkout()
        pythonpath = self.env.get("PYTHONPATH")
        self.env["PYTHONPATH"] = str(PROJECT_ROOT) + (os.pathsep + pythonpath if pythonpath else "")
        self.lanshare = [sys.executable, "-m", "lanshare.cli"]


class Tools(Commands):
    """Command lines of both tools, run the same way on the same inputs."""

    def ostree_init(self, repo: Path) -> None:
        """Create an empty archive repository for ``ostree commit`` (not timed)."""
        run_timed([self.ostree, "init", f"--repo={repo}", "--mode=archive"])

    def ostree_commit(self, repo: Path, tree: Path) -> Run:
        """Time ``ostree commit`` of ``tree``, root-owned, no xattrs, fixed timestamp."""
        return run_timed(
            [
                self.ostree, "commit", f"--repo={repo}", f"--branch={BRANCH}", "--owner-uid=0",
                "--owner-gid=0", "--no-xattrs", f"--timestamp=@{TIMESTAMP}", tree,
            ]
        )  # fmt: skip

    def lanshare_commit(self, repo: Path, tree: Path) -> Run:
        """Time ``lanshare commit`` with the same options (it creates the repository itself)."""
        return run_timed(
            [
                *self.lanshare, "commit", "--repo", repo, "--branch", BRANCH, "--tree", tree,
                "--owner-uid", "0", "--owner-gid", "0", "--no-xattrs", "--timestamp", str(TIMESTAMP),
            ],
            self.env,
        )  # fmt: skip

    def ostree_fsck(self, repo: Path) -> Run:
        """Time ``ostree fsck``."""
        return run_timed([self.ostree, "fsck", f"--repo={repo}"])

    def lanshare_fsck(self, repo: Path) -> Run:
        """Time ``lanshare fsck``."""
        return run_timed([*self.lanshare, "fsck", "--repo", repo], self.env)


def _settle() -> None:
    # Flush dirty pages before each timed run: both tools end a commit with syncfs(), which
    # would otherwise also pay for whatever the previous step left unwritten.
    os.sync()


def _read_all(root: Path) -> None:
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                with open(path, "rb") as f:
                    while f.read(1 << 20):
                        pass


def _archive_bytes(repo: Path) -> int:
    return sum(
        os.lstat(os.path.join(d, n)).st_size for d, _, names in os.walk(repo / "objects") for n in names
    )


Step = tuple[list[Run], Callable[[], Run]]


def _alternate(round_no: int, ostree: Step, lanshare: Step) -> None:
    """Run both steps, ostree first in even rounds, lanshare first in odd ones."""
    for runs, step in (ostree, lanshare) if round_no % 2 == 0 else (lanshare, ostree):
        _settle()
        runs.append(step())


def _bench_commit(
    tools: Tools, workdir: Path, tree: Path, rounds: int
) -> tuple[Operation, Path, Path, str, str]:
    op = Operation("commit (fresh repo)")
    ostree_repo = lanshare_repo = workdir
    checksums: set[tuple[str, str]] = set()
    for i in range(rounds):
        if i:
            shutil.rmtree(ostree_repo)
            shutil.rmtree(lanshare_repo)
        ostree_repo, lanshare_repo = workdir / f"repo-ostree-{i}", workdir / f"repo-lanshare-{i}"
        tools.ostree_init(ostree_repo)
        _alternate(
            i,
            (op.ostree, partial(tools.ostree_commit, ostree_repo, tree)),
            (op.lanshare, partial(tools.lanshare_commit, lanshare_repo, tree)),
        )
        checksums.add((op.ostree[-1].stdout.strip(), op.lanshare[-1].stdout.strip()))
    if len(checksums) != 1:
        raise BenchError(f"commit checksums differ between rounds: {sorted(checksums)}")
    ((ostree_checksum, lanshare_checksum),) = checksums
    return op, ostree_repo, lanshare_repo, ostree_checksum, lanshare_checksum


def _bench_fsck(tools: Tools, name: str, repo: Path, rounds: int) -> Operation:
    op = Operation(name)
    # One untimed run each first, so that neither tool's timed runs pay for a cold dentry cache.
    tools.ostree_fsck(repo)
    tools.lanshare_fsck(repo)
    for i in range(rounds):
        _alternate(
            i,
            (op.ostree, partial(tools.ostree_fsck, repo)),
            (op.lanshare, partial(tools.lanshare_fsck, repo)),
        )
    return op


def run_bench(
    workdir: Path,
    files: int = DEFAULT_FILES,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    rounds: int = 3,
    log: Callable[[str], None] = lambda _: None,
) -> BenchResult:
    """Generate a tree under ``workdir`` and measure both tools on it; raises BenchError on failure."""
    tools = Tools()
    tree = workdir / "tree"
    log(f"generating {files} files, {size / 1e6:.0f} MB (seed {seed}) in {tree} ...")
    start = time.perf_counter()
    stats = generate_tree(tree, files=files, total_bytes=size, seed=seed)
    _read_all(tree)
    log(f"  done in {time.perf_counter() - start:.1f} s")
    log(f"commit x{rounds} each ...")
    commit, ostree_repo, lanshare_repo, ostree_sum, lanshare_sum = _bench_commit(tools, workdir, tree, rounds)
    if ostree_sum != lanshare_sum:
        # Still a result worth printing, but the bench fails: the repositories are not the same.
        return BenchResult(stats, _archive_bytes(ostree_repo), ostree_sum, lanshare_sum, [commit])
    log(f"fsck x{rounds} each, on both repositories ...")
    operations = [
        commit,
        _bench_fsck(tools, "fsck (lanshare-made repo)", lanshare_repo, rounds),
        _bench_fsck(tools, "fsck (ostree-made repo)", ostree_repo, rounds),
    ]
    return BenchResult(stats, _archive_bytes(ostree_repo), ostree_sum, lanshare_sum, operations)


def format_report(result: BenchResult, rounds: int) -> str:
    """The human-readable table of ratios."""
    t = result.tree
    lines = [
        f"tree: {t.files} files ({t.total_bytes / 1e6:.1f} MB; {t.executables} executable, "
        f"{t.empty_files} empty, {t.duplicates} duplicates), {t.symlinks} symlinks, {t.dirs} dirs "
        f"({t.empty_dirs} empty)",
        "data: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sorted(t.by_kind.items())),
        f"archive objects: {result.archive_bytes / 1e6:.1f} MB "
        f"({result.archive_bytes / max(1, t.total_bytes):.0%} of the tree)",
        f"ostree commit:   {result.ostree_commit}",
        f"lanshare commit: {result.lanshare_commit}",
        "checksums match" if result.ostree_commit == result.lanshare_commit else "CHECKSUM MISMATCH",
        "",
        f"median of {rounds} alternating runs; page cache warm (tree and repos just written and "
        f"read, one untimed fsck each first, dirty pages synced before each run); {os.cpu_count()} CPUs",
        "peak RSS from GNU time" if GNU_TIME else "peak RSS from wait4 (upper bound: /usr/bin/time missing)",
    ]
    header = (
        f"{'operation':<28} {'ostree s':>9} {'lanshare s':>10} {'ratio':>6} "
        f"{'ostree CPU-s':>12} {'lanshare CPU-s':>14} {'lanshare RSS':>12}  goal ≤ {GOAL}"
    )
    lines += [header, "-" * len(header)]
    for op in result.operations:
        verdict = "PASS" if op.ratio <= GOAL else "MISS"
        lines.append(
            f"{op.name:<28} {op.wall('ostree'):>9.2f} {op.wall('lanshare'):>10.2f} {op.ratio:>6.2f} "
            f"{op.cpu('ostree'):>12.2f} {op.cpu('lanshare'):>14.2f} "
            f"{op.peak_rss_mib('lanshare'):>8.0f} MiB  {verdict}"
        )
    lines.append("")
    lines.append("all runs, wall s (ostree | lanshare):")
    for op in result.operations:
        ostree = " ".join(f"{r.wall:.2f}" for r in op.ostree)
        lanshare = " ".join(f"{r.wall:.2f}" for r in op.lanshare)
        lines.append(f"  {op.name:<28} {ostree} | {lanshare}")
    lines.append(
        "ostree peak RSS: "
        + ", ".join(f"{op.name} {op.peak_rss_mib('ostree'):.0f} MiB" for op in result.operations)
    )
    return "\n".join(lines)


def add_tree_arguments(parser: argparse.ArgumentParser) -> None:
    """``--files``, ``--size``, ``--seed``: the tree a bench generates (bench/treegen.py)."""
    parser.add_argument("--files", type=int, default=DEFAULT_FILES, help="entries in the generated tree")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="bytes of file data in the tree")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tree generator")


def add_run_arguments(parser: argparse.ArgumentParser, *, each: str, kept: str) -> None:
    """``--rounds`` (runs of each ``each``, the median reported) and ``--keep DIR`` (keeping ``kept``)."""
    parser.add_argument("--rounds", type=int, default=3, help=f"runs of each {each} (median)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help=f"work in DIR and keep {kept}")


def parse_bench_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser``'s arguments, with ``--rounds`` (see :func:`add_run_arguments`) at least 1."""
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


@contextlib.contextmanager
def work_directory(keep: Path | None, prefix: str) -> Iterator[Path]:
    """``keep`` (made if missing, left in place), else a new directory in /tmp deleted afterwards."""
    workdir = keep if keep else Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield workdir
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench and print the table; exit 1 if a tool failed or the checksums differ."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_tree_arguments(parser)
    add_run_arguments(parser, each="measurement", kept="the tree and repos")
    args = parse_bench_args(parser, argv)
    with work_directory(args.keep, "bench-") as workdir:
        try:
            result = run_bench(workdir, args.files, args.size, args.seed, args.rounds, log=print)
        except BenchError as e:
            print(f"bench failed: {e}", file=sys.stderr)
            return 1
    print()
    print(format_report(result, args.rounds))
    if result.ostree_commit != result.lanshare_commit:
        print("bench failed: lanshare commit and ostree commit differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
