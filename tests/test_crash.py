"""Crash consistency: SIGKILL at random moments during pull, commit, prune, reindex and a migration.

36 runs here; tests/test_prune.py adds ~30 prune-only ones (another history, each killed just before
a chosen filesystem change, see tests/forker.py; these prune a machine with an index, an admin pin
and a pull history).
Each run starts from a copy of one template machine — a repository with an admin pin and its
index — kills the command after a delay drawn from the measured length of one clean run, then
checks what a person recovering the machine would rely on:

- ``lanshare fsck`` and ``ostree fsck`` pass (no half-written object is visible);
- every pinned commit still has its whole closure;
- the index opens (migrating if needed) and, after ``lanshare reindex``, agrees with the repository;
- the interrupted command, run again, completes.

The delays are seeded: the seed is printed, and ``LANSHARE_CRASH_SEED=N`` replays a run.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import select
from sqlalchemy.orm import Session

from lanshare.fsck import fsck
from lanshare.index.db import alembic_config, current_revision, head_revision, open_index
from lanshare.index.models import Commit as CommitRow
from lanshare.index.models import Ref as RefRow
from lanshare.index.sync import reindex
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.retention import PIN_REF_PREFIX
from tests.conftest import build_tree, lanshare, ostree
from tests.forker import Forker, Job
from tests.test_serve import Daemon, _start, _stop

SEED = int(os.environ.get("LANSHARE_CRASH_SEED", "20261126"))
RUNS = {"pull": 10, "commit": 8, "prune": 6, "reindex": 6, "migration": 6}


def _tree(root: Path, seed: int, files: int) -> Path:
    build_tree(root, seed)
    rng = random.Random(seed)
    for i in range(files):
        path = root / "data" / f"d{i % 9}" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(500, 6000)))
    return root


def _commit(repo: Path, tree: Path, ref: str = "os/stable") -> str:
    assert lanshare("commit", "--repo", repo, "--branch", ref, "--tree", tree, "--no-xattrs") == 0
    head = Repo.open(repo).read_ref(ref)
    assert head is not None
    return head


@dataclass
class Machine:
    """One copy of the template machine: config, repository and index."""

    base: Path
    config: Path
    repo: Path
    url: str  # the index database

    def cli(self, *args: str | Path) -> Job:
        return {"cli": [*map(str, args), "--config", str(self.config)]}


@dataclass
class World:
    """The publisher (served by a real daemon) and a template machine to copy for each run."""

    tmp: Path
    daemon: Daemon
    commits: dict[str, str]
    template: Machine
    new_tree: Path  # what the commit runs commit
    new_root_tree: str  # the root dirtree that commit has
    copies: int = 0

    def machine(self) -> Machine:
        self.copies += 1
        base = self.tmp / f"m{self.copies}"
        shutil.copytree(self.template.base, base, symlinks=True)
        return _machine(base, self.daemon.url)


def _machine(base: Path, peer: str) -> Machine:
    repo = base / "repo"
    url = f"sqlite:///{base / 'state' / 'index.sqlite'}"
    (base / "state").mkdir(parents=True, exist_ok=True)
    config = base / "lanshare.toml"
    config.write_text(
        f'[repo]\npath = "{repo}"\n[database]\nurl = "{url}"\n'
        "[trust]\nrequire_signatures = false\n"
        f'[sharing]\npeers = ["{peer}"]\nadvertise = false\ndiscovery = false\n'
        '[origin]\nrefs = ["os/stable"]\n'
        '[retention]\nkeep_latest = 1\nkeep_younger_than = "0s"\nmax_size = "1"\n'
    )
    return Machine(base, config, repo, url)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    print(f"\ncrash seed {SEED} (replay with LANSHARE_CRASH_SEED={SEED})")
    tmp = tmp_path_factory.mktemp("crash")
    publisher = tmp / "publisher"
    commits = {f"v{n}": _commit(publisher, _tree(tmp / f"t{n}", n, 100)) for n in (1, 2, 3)}
    (tmp / "daemon").mkdir()
    daemon = _start(tmp / "daemon", publisher)
    try:
        yield _world(tmp, daemon, commits)
    finally:
        assert _stop(daemon) == 0


def _world(tmp: Path, daemon: Daemon, commits: dict[str, str]) -> World:
    template = _machine(tmp / "template", daemon.url)
    # The machine holds v1 (pinned by an admin) and v2 (the head); the publisher is at v3.
    for version in ("v1", "v2"):
        target = commits[version]
        assert lanshare("pull", target, "--ref", "os/stable", "--config", template.config) == 0
    assert lanshare("pin", commits["v1"], "--reason", "lab machines", "--config", template.config) == 0
    # A side ref with history for prune to evict, and tmp/ debris from an earlier crash.
    side = _tree(tmp / "side", 7, 40)
    for n in range(3):
        (side / "n").write_text(str(n))
        _commit(template.repo, side, "os/side")
    new_tree = _tree(tmp / "t-new", 9, 80)
    scratch = tmp / "scratch"
    shutil.copytree(template.repo, scratch, symlinks=True)
    args = ("commit", "--repo", scratch, "--branch", "os/new", "--tree", new_tree, "--no-xattrs")
    assert lanshare(*args, "--timestamp", "1700000000") == 0
    new_commit = Repo.open(scratch).read_ref("os/new")
    assert new_commit is not None
    new_tree_checksum = Repo.open(scratch).load_commit(new_commit).root_tree
    return World(tmp, daemon, commits, template, new_tree, new_tree_checksum)


@pytest.fixture(scope="module")
def forker() -> Iterator[Forker]:
    runner = Forker()
    yield runner
    runner.close()


def _pins(repo: Repo) -> dict[str, str]:
    return {ref: commit for ref, commit in repo.list_refs().items() if ref.startswith(PIN_REF_PREFIX)}


def _check(machine: Machine, what: str) -> None:
    """Both fscks pass, pinned closures are whole, the index opens and agrees after reindex."""
    repo = Repo.open(machine.repo)
    report = fsck(repo)
    assert report.ok, f"{what}: lanshare fsck: {report.problems}"
    result = ostree("fsck", f"--repo={machine.repo}", check=False)
    assert result.returncode == 0, f"{what}: ostree fsck: {result.stderr}"
    pins = _pins(repo)
    assert pins, f"{what}: the admin pin ref is gone"
    for ref, commit in pins.items():
        assert repo.missing_objects(commit) == [] and not repo.is_partial(commit), f"{what}: {ref} broken"
    engine = open_index(machine.url)
    try:
        assert current_revision(engine) == head_revision()
        reindex(engine, repo)
        with Session(engine) as session:
            rows = {(r.collection_id or None, r.name): r.commit for r in session.scalars(select(RefRow))}
            commits = {c.checksum: c.complete for c in session.scalars(select(CommitRow))}
        refs = {(cid or None, name): commit for (cid, name), commit in repo.list_collection_refs().items()}
        assert rows == refs, f"{what}: index refs differ from the repository"
        held = {c for c, kind, _ in repo.iter_objects() if kind is ObjectType.COMMIT}
        assert set(commits) == held, f"{what}: index commits differ from the repository"
        for commit, complete in commits.items():
            assert complete == (not repo.is_partial(commit)), f"{what}: {commit} completeness"
    finally:
        engine.dispose()


@dataclass
class Scenario:
    """One kind of work to interrupt: how to start it, and how to finish and check it afterwards."""

    job: Callable[[Machine], Job]
    finish: Callable[[Machine], None]
    prepare: Callable[[Machine], None] = lambda machine: None


def _scenarios(world: World) -> dict[str, Scenario]:
    v3 = world.commits["v3"]
    commit_args = [
        "--branch",
        "os/new",
        "--tree",
        str(world.new_tree),
        "--no-xattrs",
        "--timestamp",
        "1700000000",
    ]

    def pulled(m: Machine) -> None:
        assert lanshare("pull", "os/stable", "--config", m.config) == 0
        repo = Repo.open(m.repo)
        assert repo.read_ref("os/stable") == v3 and repo.missing_objects(v3) == []

    def committed(m: Machine) -> None:
        assert lanshare("commit", "--repo", m.repo, *commit_args) == 0
        repo = Repo.open(m.repo)
        head = repo.read_ref("os/new")
        assert head is not None and repo.missing_objects(head) == []
        # The tree committed is the whole tree, whatever the killed run had left (a killed run
        # that got as far as moving the ref makes the re-run a child commit with the same tree).
        assert repo.load_commit(head).root_tree == world.new_root_tree

    def pruned(m: Machine) -> None:
        assert lanshare("prune", "--config", m.config) == 0
        repo = Repo.open(m.repo)
        assert repo.read_ref("os/side") is not None and repo.missing_objects(world.commits["v2"]) == []

    def reindexed(m: Machine) -> None:
        assert lanshare("reindex", "--config", m.config) == 0

    def at_previous_revision(m: Machine) -> None:
        # The index one schema revision back (leases without their holder process columns).
        engine = open_index(m.url)
        try:
            with engine.begin() as connection:
                command.downgrade(alembic_config(connection), "-1")
        finally:
            engine.dispose()

    def migrated(m: Machine) -> None:
        open_index(m.url).dispose()

    return {
        "pull": Scenario(lambda m: m.cli("pull", "os/stable"), pulled),
        "commit": Scenario(lambda m: {"cli": ["commit", "--repo", str(m.repo), *commit_args]}, committed),
        "prune": Scenario(lambda m: m.cli("prune"), pruned),
        "reindex": Scenario(lambda m: m.cli("reindex"), reindexed),
        "migration": Scenario(lambda m: {"open_index": m.url}, migrated, at_previous_revision),
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(RUNS))
def test_sigkill_at_random_moments_leaves_a_machine_that_recovers(
    world: World, forker: Forker, kind: str
) -> None:
    scenario = _scenarios(world)[kind]
    rng = random.Random(f"{SEED}-{kind}")
    durations = []
    for _ in range(2):  # the first run also pays for lazy imports: the shorter one is the work
        probe = world.machine()
        scenario.prepare(probe)
        durations.append(forker.measure(scenario.job(probe)))
        shutil.rmtree(probe.base)
    duration = min(durations)
    interrupted = 0
    for run in range(RUNS[kind]):
        machine = world.machine()
        scenario.prepare(machine)
        delay = rng.uniform(0.0, duration)
        started = time.monotonic()
        killed = forker.kill_during(scenario.job(machine), delay)
        interrupted += killed
        what = f"{kind} run {run} killed at {delay:.3f} s of {duration:.3f} s (seed {SEED})"
        if not killed:
            # It finished first (the machine got less busy than when it was measured, e.g. the
            # other test worker went idle): draw the next delays within the time it took.
            duration = min(duration, time.monotonic() - started)
        _check(machine, what)
        scenario.finish(machine)
        assert fsck(Repo.open(machine.repo)).ok, what + ", then re-run"
    # Kills drawn over the whole clean duration: most land while the work is under way.
    assert interrupted >= RUNS[kind] // 2, f"{kind}: only {interrupted} of {RUNS[kind]} runs were killed"
