"""``lanshare prune`` against ``ostree prune --refs-only`` on copies of one synthetic history, same run.

Generates a many-ref history once (bench/historygen.py: 50 refs × 200 commits, ~200,000 objects by
default), then in every round copies it (``cp -a``, not timed) once per variant and times each
prune as a child process: wall clock, CPU seconds (``wait4``) and peak RSS (GNU time). Variants:

* ``ostree prune --refs-only`` (depth -1): keeps everything reachable from a ref, deletes the rest;
* the same with ``--keep-younger-than="30 days ago"``: keeps ref heads and recent commits only;
* ``lanshare prune`` with keep_latest 3, keep_younger_than 30d and max_size 20GiB: nothing that
  a commit reaches has to go, so it deletes only garbage (comparable to ``--refs-only``);
* ``lanshare prune`` with a tight max_size (a fraction of the repository) that forces eviction.

Rounds alternate the order of the variants; dirty pages are synced before each timed run; medians
are reported. The first round's results are checked with ``ostree fsck`` after the timed runs (in
parallel; ostree 2022.7's fsck grows with the square of the commit count, ~45 min at full size,
``--no-fsck`` skips it) and their objects compared, so the table says what each tool deleted.
The goals (lanshare/ostree wall time ≤ 1.5, lanshare peak RSS ≤ 200 MB) are printed as PASS or
MISS, never asserted.

    python -m bench.bench_prune [--refs 50 --commits 200] [--rounds 3] [--keep DIR] [--profile FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.bench_repo import (
    GNU_TIME,
    BenchError,
    Commands,
    Run,
    add_run_arguments,
    parse_bench_args,
    run_timed,
    work_directory,
)
from bench.historygen import (
    DEFAULT_BASE_FILES,
    DEFAULT_COMMITS,
    DEFAULT_REFS,
    HistoryStats,
    generate_history,
)
from lanshare.units import format_size

TIME_GOAL = 1.5
RSS_GOAL_MB = 200
KEEP_LATEST = 3
KEEP_YOUNGER_THAN = "30d"
OSTREE_YOUNGER_THAN = "30 days ago"
LOOSE_MAX_SIZE = "20GiB"
DEFAULT_TIGHT_FRACTION = 0.5


@dataclass(frozen=True)
class Variant:
    """One way of pruning the repository."""

    key: str
    tool: str  # "ostree" or "lanshare"
    label: str


@dataclass
class Outcome:
    """Every run of one variant, and what its first run left behind."""

    variant: Variant
    runs: list[Run] = field(default_factory=list)
    after: Counter[str] = field(default_factory=Counter)  # objects left, by extension
    kept: set[str] = field(default_factory=set)  # object file names left (first round)
    report: dict[str, object] = field(default_factory=dict)  # lanshare --json, first round
    fsck: str = "not run"

    @property
    def wall(self) -> float:
        """Median wall-clock seconds."""
        return statistics.median(r.wall for r in self.runs)

    @property
    def cpu(self) -> float:
        """Median CPU seconds."""
        return statistics.median(r.cpu for r in self.runs)

    @property
    def peak_rss_mb(self) -> float:
        """Highest peak RSS over all runs, in MB (10^6 bytes)."""
        return max(r.maxrss_kib for r in self.runs) * 1024 / 1e6


@dataclass
class BenchResult:
    """Everything the bench measured."""

    history: HistoryStats
    before: Counter[str]
    tight_max_size: int
    outcomes: dict[str, Outcome]
    pairs: list[tuple[str, str, str]]  # (name, ostree variant, lanshare variant)
    copy_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def _objects(repo: Path) -> set[str]:
    """Names (``XX/YYYY….ext``) of every object file."""
    names: set[str] = set()
    objects = repo / "objects"
    for prefix in os.listdir(objects):
        with os.scandir(objects / prefix) as entries:
            names.update(f"{prefix}/{entry.name}" for entry in entries)
    return names


def _by_type(names: set[str]) -> Counter[str]:
    return Counter(name.rpartition(".")[2] for name in names)


def _bytes(repo: Path) -> int:
    return sum(
        os.lstat(os.path.join(d, n)).st_size for d, _, names in os.walk(repo / "objects") for n in names
    )


class Tools(Commands):
    """Command lines of both tools."""

    def ostree_prune(self, repo: Path, *extra: str) -> Run:
        """Time ``ostree prune --refs-only`` (default depth -1)."""
        return run_timed([self.ostree, "prune", f"--repo={repo}", "--refs-only", *extra])

    def lanshare_prune(self, config: Path) -> Run:
        """Time ``lanshare prune --config CONFIG --json``."""
        return run_timed([*self.lanshare, "prune", "--config", config, "--json"], self.env)

    def ostree_fsck(self, repo: Path) -> tuple[bool, str]:
        """Whether ``ostree fsck`` passes, and its last line (or errors) with how long it took."""
        start = time.perf_counter()
        result = subprocess.run([self.ostree, "fsck", f"--repo={repo}"], capture_output=True, text=True)
        took = f"({time.perf_counter() - start:.0f} s)"
        if result.returncode != 0:
            return False, f"FAILED {took}: {result.stderr.strip()} {result.stdout.strip()[-2000:]}"
        return True, f"{result.stdout.strip().splitlines()[-1]} {took}"


def write_config(path: Path, repo: Path, database: Path, max_size: str | int) -> Path:
    """A lanshare config pruning ``repo`` with the bench's retention, its index in ``database``."""
    size = f'"{max_size}"' if isinstance(max_size, str) else str(max_size)
    path.write_text(
        "\n".join(
            [
                "[repo]",
                f'path = "{repo}"',
                "[database]",
                f'url = "sqlite:///{database}"',
                "[retention]",
                f"keep_latest = {KEEP_LATEST}",
                f'keep_younger_than = "{KEEP_YOUNGER_THAN}"',
                f"max_size = {size}",
                "",
            ]
        )
    )
    return path


def _copy(source: Path, dest: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["cp", "-a", str(source), str(dest)], check=True)
    return time.perf_counter() - start


class _Runner:
    """Makes a fresh copy for a variant and prunes it."""

    def __init__(self, tools: Tools, workdir: Path, source: Path, tight: int) -> None:
        self.tools = tools
        self.workdir = workdir
        self.source = source
        self.tight = tight
        self.copy_seconds = 0.0

    def prepare(self, variant: Variant, round_no: int) -> tuple[Path, Callable[[], Run]]:
        """Copy the source repository (untimed); returns the copy and the timed step."""
        run_dir = self.workdir / f"round{round_no}-{variant.key}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        repo = run_dir / "repo"
        self.copy_seconds += _copy(self.source, repo)
        if variant.key == "ostree":
            return repo, lambda: self.tools.ostree_prune(repo)
        if variant.key == "ostree-younger":
            return repo, lambda: self.tools.ostree_prune(repo, f"--keep-younger-than={OSTREE_YOUNGER_THAN}")
        max_size: str | int = LOOSE_MAX_SIZE if variant.key == "lanshare" else self.tight
        config = write_config(run_dir / "lanshare.toml", repo, run_dir / "index.sqlite", max_size)
        return repo, lambda: self.tools.lanshare_prune(config)


def _variants(tight: int) -> list[Variant]:
    return [
        Variant("ostree", "ostree", "ostree prune --refs-only"),
        Variant("lanshare", "lanshare", f"lanshare prune, max_size {LOOSE_MAX_SIZE}"),
        Variant("ostree-younger", "ostree", f'ostree … --keep-younger-than="{OSTREE_YOUNGER_THAN}"'),
        Variant("lanshare-tight", "lanshare", f"lanshare prune, max_size {format_size(tight)}"),
    ]


PAIRS = [
    ("keep all reachable", "ostree", "lanshare"),
    ("evict old history", "ostree-younger", "lanshare-tight"),
]


def run_bench(
    workdir: Path,
    refs: int = DEFAULT_REFS,
    commits: int = DEFAULT_COMMITS,
    base_files: int = DEFAULT_BASE_FILES,
    seed: int = 0,
    rounds: int = 3,
    tight_fraction: float = DEFAULT_TIGHT_FRACTION,
    fsck_source: bool = False,
    fsck_results: bool = True,
    keep_results: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> BenchResult:
    """Generate the history under ``workdir`` and measure every variant.

    Raises BenchError when a tool fails; a pruned copy that fails fsck or lost a reachable object is
    listed in ``failures`` so that the measurements are still reported.
    """
    tools = Tools()
    source = workdir / "source"
    log(f"generating {refs} refs × {commits} commits (seed {seed}) in {source} ...")
    history = generate_history(source, refs, commits, base_files, seed)
    log(history.describe())
    if fsck_source:
        log("ostree fsck of the generated repository ...")
        ok, text = tools.ostree_fsck(source)
        log("  " + text)
        if not ok:
            raise BenchError(f"the generated repository does not pass ostree fsck: {text}")
    source_objects = _objects(source)
    before = _by_type(source_objects)
    tight = int(_bytes(source) * tight_fraction)
    variants = _variants(tight)
    outcomes = {v.key: Outcome(v) for v in variants}
    runner = _Runner(tools, workdir, source, tight)
    first: dict[str, Path] = {}
    for round_no in range(rounds):
        order = variants if round_no % 2 == 0 else variants[::-1]
        log(f"round {round_no + 1}/{rounds}: " + ", ".join(v.key for v in order))
        for variant in order:
            repo, step = runner.prepare(variant, round_no)
            os.sync()  # the copy's dirty pages must not be charged to the timed run
            run = step()
            outcome = outcomes[variant.key]
            outcome.runs.append(run)
            kept = _objects(repo)
            log(
                f"  {variant.key:<15} {run.wall:7.2f} s  {run.maxrss_kib / 1024:6.0f} MiB  "
                f"{len(kept)} objects left"
            )
            if round_no == 0:
                outcome.kept, outcome.after = kept, _by_type(kept)
                if variant.tool == "lanshare":
                    outcome.report = json.loads(run.stdout)
                first[variant.key] = repo  # fsck'd after the timed runs, so it cannot disturb them
                continue
            if len(kept) != len(outcome.kept):
                # Only "30 days ago" moves between rounds: a commit may have just crossed it.
                log(f"  note: {variant.key} left {len(kept) - len(outcome.kept):+d} objects vs round 1")
            shutil.rmtree(repo.parent)
    failures: list[str] = []
    if fsck_results:
        # ostree fsck re-walks every commit's whole tree and, per object, the list of commits that
        # reach it, so its time grows with the square of the commits: ~45 min at 50 refs × 200.
        log(f"ostree fsck of the first round's {len(first)} copies in parallel (slow at full size) ...")
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            checks = {key: pool.submit(tools.ostree_fsck, repo) for key, repo in first.items()}
            for key, check in checks.items():
                ok, outcomes[key].fsck = check.result()
                log(f"  {key:<15} {outcomes[key].fsck}")
                if not ok:
                    failures.append(f"{key}: ostree fsck failed")
    if not keep_results:
        for repo in first.values():
            shutil.rmtree(repo.parent)
    # lanshare with room for everything must keep all that --refs-only keeps (it may keep more).
    lost = outcomes["ostree"].kept - outcomes["lanshare"].kept
    if lost:
        failures.append(f"lanshare prune ({LOOSE_MAX_SIZE}) deleted {len(lost)} objects a ref reaches")
    for outcome in outcomes.values():
        if not outcome.kept <= source_objects:
            failures.append(f"{outcome.variant.key}: objects appeared that the source does not have")
    return BenchResult(history, before, tight, outcomes, PAIRS, runner.copy_seconds, failures)


def profile_lanshare(workdir: Path, source: Path, out: Path, top: int = 25) -> str:
    """Run ``lanshare prune`` (max_size 20GiB) under cProfile on a fresh copy; the top functions."""
    run_dir = workdir / "profile"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    repo = run_dir / "repo"
    _copy(source, repo)
    config = write_config(run_dir / "lanshare.toml", repo, run_dir / "index.sqlite", LOOSE_MAX_SIZE)
    os.sync()
    env = Tools().env
    cmd = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "lanshare.cli", "prune", "--json"]
    subprocess.run([*cmd, "--config", str(config)], check=True, env=env, stdout=subprocess.DEVNULL)
    shutil.rmtree(run_dir)
    text = []
    for order in ("cumulative", "tottime"):
        stream = io.StringIO()
        pstats.Stats(str(out), stream=stream).sort_stats(order).print_stats(top)
        text.append(f"--- cProfile, by {order} ---\n" + stream.getvalue())
    return "\n".join(text)


def _counts(counter: Counter[str]) -> str:
    return " ".join(f"{counter.get(ext, 0)} {ext}" for ext in ("commit", "dirtree", "dirmeta", "filez"))


def format_report(result: BenchResult, rounds: int) -> str:
    """The human-readable tables: timings and ratios, then what each variant deleted."""
    out = result.outcomes
    total = sum(result.before.values())
    lines = [
        result.history.describe(),
        f"exact object count: {total} ({_counts(result.before)})",
        f"lanshare retention: keep_latest {KEEP_LATEST}, keep_younger_than {KEEP_YOUNGER_THAN}, "
        f"max_size {LOOSE_MAX_SIZE} or {result.tight_max_size} bytes (tight: "
        f"{format_size(result.tight_max_size)})",
        "",
        f"median of {rounds} rounds, variant order alternating, each on a fresh `cp -a` copy (copies "
        f"took {result.copy_seconds:.0f} s in all, not timed), dirty pages synced before each run; "
        f"{os.cpu_count()} CPUs",
        "peak RSS from GNU time" if GNU_TIME else "peak RSS from wait4 (upper bound: /usr/bin/time missing)",
    ]
    header = (
        f"{'comparison':<19} {'ostree s':>8} {'lanshare s':>10} {'ratio':>6} {'ostree CPU-s':>12} "
        f"{'lanshare CPU-s':>14} {'lanshare RSS':>12}  goal: ratio ≤ {TIME_GOAL}, RSS ≤ {RSS_GOAL_MB} MB"
    )
    lines += ["", header, "-" * len(header)]
    for name, o_key, l_key in result.pairs:
        o, ls = out[o_key], out[l_key]
        ratio = ls.wall / o.wall
        time_ok = "PASS" if ratio <= TIME_GOAL else "MISS"
        rss_ok = "PASS" if ls.peak_rss_mb <= RSS_GOAL_MB else "MISS"
        lines.append(
            f"{name:<19} {o.wall:>8.2f} {ls.wall:>10.2f} {ratio:>6.2f} {o.cpu:>12.2f} {ls.cpu:>14.2f} "
            f"{ls.peak_rss_mb:>9.0f} MB  time {time_ok}, memory {rss_ok}"
        )
    lines += ["", "variants (first round: objects left, fsck; all runs' wall s; peak RSS):"]
    for outcome in out.values():
        deleted = total - sum(outcome.after.values())
        lines.append(f"  {outcome.variant.label}")
        lines.append(f"    deleted {deleted} objects, left {_counts(outcome.after)}")
        report = outcome.report
        if report:
            evicted = report.get("evicted")
            commit_only = report.get("commit_only")
            made_partial = report.get("made_partial")
            lines.append(
                f"    lanshare report: {report.get('objects_freed')} objects freed, "
                f"{len(evicted) if isinstance(evicted, list) else '?'} commits evicted, "
                f"{len(commit_only) if isinstance(commit_only, dict) else '?'} kept as commit object only "
                f"({len(made_partial) if isinstance(made_partial, list) else '?'} newly partial)"
            )
        runs = " ".join(f"{r.wall:.2f}" for r in outcome.runs)
        lines.append(f"    runs: {runs} s; peak RSS {outcome.peak_rss_mb:.0f} MB; fsck: {outcome.fsck}")
    extra = out["lanshare"].kept - out["ostree"].kept
    lines += [
        "",
        f"lanshare ({LOOSE_MAX_SIZE}) keeps every object `--refs-only` keeps, plus {len(extra)} "
        f"({_counts(_by_type(extra))}): commits no ref reaches (force-pushed away, deleted refs, "
        "interrupted pulls) fit under max_size, so lanshare keeps them; it deletes only what no "
        "commit reaches",
    ]
    lines += [f"FAILED: {failure}" for failure in result.failures]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench and print the tables; exit 1 if a tool failed or a result is wrong."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--refs", type=int, default=DEFAULT_REFS, help="refs in the generated history")
    parser.add_argument("--commits", type=int, default=DEFAULT_COMMITS, help="commits per ref")
    parser.add_argument("--base-files", type=int, default=DEFAULT_BASE_FILES, help="files in the base tree")
    parser.add_argument("--seed", type=int, default=0, help="seed of the history generator")
    add_run_arguments(parser, each="variant", kept="the repositories")
    parser.add_argument(
        "--tight-fraction",
        type=float,
        default=DEFAULT_TIGHT_FRACTION,
        help="tight max_size as a fraction of the repository's object bytes",
    )
    parser.add_argument("--fsck-source", action="store_true", help="ostree fsck the generated repo first")
    parser.add_argument("--no-fsck", action="store_true", help="skip ostree fsck of the pruned copies")
    parser.add_argument("--profile", type=Path, metavar="FILE", help="also cProfile lanshare prune into FILE")
    args = parse_bench_args(parser, argv)
    with work_directory(args.keep, "bench-prune-") as workdir:
        try:
            result = run_bench(
                workdir,
                args.refs,
                args.commits,
                args.base_files,
                args.seed,
                args.rounds,
                args.tight_fraction,
                fsck_source=args.fsck_source,
                fsck_results=not args.no_fsck,
                keep_results=args.keep is not None,
                log=print,
            )
            print()
            print(format_report(result, args.rounds), flush=True)
            if args.profile:
                print(f"\nprofiling lanshare prune (max_size {LOOSE_MAX_SIZE}) into {args.profile} ...")
                print(profile_lanshare(workdir, workdir / "source", args.profile))
        except (BenchError, subprocess.CalledProcessError) as e:
            print(f"bench failed: {e}", file=sys.stderr)
            return 1
    for failure in result.failures:
        print(f"bench failed: {failure}", file=sys.stderr)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
