"""Retention and prune (DESIGN §4) on real repositories, checked with both fscks and ostree pull-local."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lanshare.fsck import fsck
from lanshare.gvariant import Variant
from lanshare.ostree.commit_tree import CommitOptions, commit_tree
from lanshare.ostree.objects import DirMeta, ObjectType
from lanshare.ostree.repo import Repo
from lanshare.retention import RetentionPolicy, plan_retention
from lanshare.update_path import RepoGraph, compute_path
from tests.conftest import lanshare, ostree
from tests.forker import Forker, Job

DAY = 86400


def write_config(tmp_path: Path, repo: Path, **retention: str | int) -> Path:
    """A config file for ``repo`` with its index in tmp_path and the given retention keys."""
    lines = [
        "[repo]",
        f'path = "{repo}"',
        "[database]",
        f'url = "sqlite:///{tmp_path}/index.sqlite"',
        "[retention]",
        *(
            f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}"
            for key, value in retention.items()
        ),
    ]
    path = tmp_path / "lanshare.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def publish(repo: Repo, tree: Path, ref: str, version: str, when: int, files: int = 20, **meta: str) -> str:
    """Commit a tree of ``files`` unique files plus shared ones on ``ref``."""
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "unique").mkdir(parents=True)
    for i in range(files):
        (tree / "unique" / f"f{i}").write_bytes(f"{version}:{i}:".encode() * 50)
    (tree / "shared").write_bytes(b"shared by every version" * 100)
    metadata = {"version": Variant("s", version)}
    if meta.get("checkpoint"):
        metadata["lanshare.checkpoint"] = Variant("b", True)
    if "target" in meta:
        metadata["eos.checkpoint-target"] = Variant("s", meta["target"])
    options = CommitOptions(
        branch=ref,
        parent="none" if repo.read_ref(ref) is None else None,
        timestamp=when,
        metadata=metadata,
        owner_uid=0,
        owner_gid=0,
        xattrs=False,
    )
    checksum, _ = commit_tree(repo, tree, options)
    repo.write_ref(ref, checksum)
    return checksum


def build_history(tmp_path: Path, files: int = 20) -> tuple[Repo, dict[str, str]]:
    """os/stable v1..v6 (v3 checkpoint, v6 switches) then os/stable-v2 v7..v9, all 100+ days old."""
    repo = Repo.init(tmp_path / "repo")
    tree = tmp_path / "tree"
    when = int(time.time()) - 200 * DAY
    versions: dict[str, str] = {}
    for n in range(1, 10):
        ref = "os/stable" if n <= 6 else "os/stable-v2"
        meta = {"checkpoint": "yes"} if n == 3 else {"target": "os/stable-v2"} if n == 6 else {}
        versions[str(n)] = publish(repo, tree, ref, str(n), when + n * DAY, files, **meta)
    return repo, versions


def assert_fsck_clean(repo: Repo) -> None:
    report = fsck(repo)
    assert report.ok, report.problems
    result = ostree("fsck", f"--repo={repo.path}", check=False)
    assert result.returncode == 0, result.stderr


def test_prune_keeps_checkpoint_chain_and_a_machine_at_v1_can_pull_its_path(tmp_path: Path) -> None:
    repo, v = build_history(tmp_path)
    config = write_config(tmp_path, repo.path, keep_latest=1, keep_younger_than="1d", max_size="1")
    before = sum(1 for _ in repo.iter_objects())

    assert lanshare("prune", "--config", config) == 0
    after = sum(1 for _ in repo.iter_objects())
    assert after < before
    assert_fsck_clean(repo)
    # Old refs still resolve, and checkpoints and heads are whole.
    assert repo.read_ref("os/stable") == v["6"] and repo.read_ref("os/stable-v2") == v["9"]
    for kept in ("3", "6", "9"):
        assert repo.missing_objects(v[kept]) == [] and not repo.is_partial(v[kept])
    # The rest of the followed history stays as commit objects only, so paths stay computable.
    for other in ("1", "2", "4", "5", "7", "8"):
        assert repo.has_object(v[other], ObjectType.COMMIT) and repo.is_partial(v[other])

    # A machine still on v1 computes its path here and pulls every step with stock ostree.
    path = compute_path(RepoGraph(repo), v["1"], "os/stable")
    assert [s.version for s in path.steps] == ["3", "6", "9"]
    client = tmp_path / "client"
    ostree("init", f"--repo={client}", "--mode=archive")
    for step in path.steps:
        ostree("pull-local", f"--repo={client}", str(repo.path), step.commit)
    assert "no errors found" in ostree("fsck", f"--repo={client}").stdout


def test_dry_run_reports_and_removes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, v = build_history(tmp_path)
    config = write_config(tmp_path, repo.path, keep_latest=1, keep_younger_than="1d", max_size="1")
    objects = sorted(p for _, _, p in repo.iter_objects())
    assert lanshare("prune", "--config", config, "--dry-run", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] and report["objects_freed"] > 0
    assert "checkpoint on os/stable" in report["kept"][v["3"]]
    assert any("head of os/stable-v2" in r for r in report["kept"][v["9"]])
    assert "history of os/stable" in report["commit_only"][v["1"]]
    assert sorted(p for _, _, p in repo.iter_objects()) == objects
    assert not repo.partial_commits()


def test_under_max_size_nothing_reachable_is_evicted_but_garbage_goes(tmp_path: Path) -> None:
    repo, v = build_history(tmp_path)
    stray = repo.write_metadata(ObjectType.DIR_META, DirMeta(1234, 1234, 0o40700).to_bytes())  # unreferenced
    config = write_config(tmp_path, repo.path, keep_latest=1, keep_younger_than="1d", max_size="20GiB")
    assert lanshare("prune", "--config", config) == 0
    assert all(repo.missing_objects(c) == [] for c in v.values())
    assert not repo.has_object(stray, ObjectType.DIR_META)


def test_over_max_size_least_recently_used_goes_first(tmp_path: Path) -> None:
    repo, v = build_history(tmp_path)
    policy = RetentionPolicy(keep_latest=1, keep_younger_than=0, max_size=1, now=time.time())
    roots = plan_retention(repo, policy)
    v2_extra = sum(roots.sizes[key] for key in repo.iter_closure(v["2"]) if key not in roots.marked)
    # Room for exactly one more version: the most recently used evictable one must win it.
    policy.max_size = roots.bytes_kept + v2_extra
    policy.last_used = {v["2"]: time.time(), v["1"]: time.time() - 10}
    plan = plan_retention(repo, policy)
    assert "fits under max_size" in plan.full[v["2"]]
    assert v["1"] in plan.commit_only and v["1"] not in plan.full


def test_history_of_refs_nobody_follows_is_evicted(tmp_path: Path) -> None:
    repo, v = build_history(tmp_path)
    when = int(time.time()) - 100 * DAY
    lab = [publish(repo, tmp_path / "lab", "os/lab", f"lab{n}", when + n) for n in range(3)]
    config = write_config(tmp_path, repo.path, keep_latest=1, keep_younger_than="1d", max_size="1")
    config.write_text(config.read_text() + '[origin]\nrefs = ["os/stable"]\n')
    assert lanshare("prune", "--config", config) == 0
    assert repo.missing_objects(lab[2]) == []  # a ref's head always stays
    assert not repo.has_object(lab[0], ObjectType.COMMIT) and not repo.has_object(lab[1], ObjectType.COMMIT)
    # os/stable-v2 is followed too: os/stable's checkpoint switches to it.
    assert repo.missing_objects(v["9"]) == [] and repo.has_object(v["7"], ObjectType.COMMIT)
    assert_fsck_clean(repo)


def test_pin_keeps_a_commit_and_survives_reindex_and_unpin_releases_it(tmp_path: Path) -> None:
    repo, v = build_history(tmp_path)
    config = write_config(tmp_path, repo.path, keep_latest=1, keep_younger_than="1d", max_size="1")
    assert lanshare("pin", "--config", config, v["1"], "--reason", "lab machines") == 0
    assert repo.read_ref(f"lanshare/pins/commit/{v['1']}") == v["1"]
    assert lanshare("reindex", "--config", config) == 0
    assert lanshare("prune", "--config", config) == 0
    assert repo.missing_objects(v["1"]) == []
    # The mirror ref protects it from a stray `ostree prune --refs-only` too.
    ostree("prune", f"--repo={repo.path}", "--refs-only")
    assert repo.missing_objects(v["1"]) == []
    assert_fsck_clean(repo)

    assert lanshare("unpin", "--config", config, v["1"]) == 0
    assert repo.read_ref(f"lanshare/pins/commit/{v['1']}") is None
    assert lanshare("prune", "--config", config) == 0
    assert repo.is_partial(v["1"]) and repo.missing_objects(v["1"])
    assert lanshare("unpin", "--config", config, v["1"]) == 1


def test_ref_glob_pin_keeps_whole_history_of_matching_refs(tmp_path: Path) -> None:
    repo, v = build_history(tmp_path)
    config = write_config(tmp_path, repo.path, keep_latest=1, keep_younger_than="1d", max_size="1")
    assert lanshare("pin", "--config", config, "os/stable-v*", "--reason", "new branch") == 0
    assert repo.read_ref("lanshare/pins/ref/os/stable-v2") == v["9"]
    assert lanshare("prune", "--config", config) == 0
    for n in ("7", "8", "9"):
        assert repo.missing_objects(v[n]) == [] and not repo.is_partial(v[n])
    assert repo.is_partial(v["5"])


def test_lease_of_a_pull_in_progress_is_kept(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy.orm import Session

    from lanshare.index.db import open_index
    from lanshare.index.models import Lease

    repo, v = build_history(tmp_path)
    config = write_config(tmp_path, repo.path, keep_latest=1, keep_younger_than="1d", max_size="1")
    engine = open_index(f"sqlite:///{tmp_path}/index.sqlite")
    with Session(engine) as session, session.begin():
        session.add(Lease(commit=v["2"], holder="pull 1", expires_at=datetime.now(UTC) + timedelta(hours=1)))
        session.add(Lease(commit=v["1"], holder="old", expires_at=datetime.now(UTC) - timedelta(hours=1)))
    engine.dispose()
    assert lanshare("prune", "--config", config) == 0
    assert repo.missing_objects(v["2"]) == [] and not repo.is_partial(v["2"])
    assert repo.is_partial(v["1"])


def _roots(repo: Repo) -> dict[str, list[tuple[str, ObjectType]]]:
    plan = plan_retention(
        repo,
        RetentionPolicy(
            keep_latest=1, keep_younger_than=DAY, max_size=1, followed_refs=["os/stable"], now=time.time()
        ),
    )
    return {commit: list(repo.iter_closure(commit)) for commit in plan.full}


def _phase(change: tuple[str, str], repo: Path) -> str:
    """Which step of a prune a filesystem change belongs to (see lanshare/prune.py)."""
    event, path = change
    where = Path(path).relative_to(repo) if Path(path).is_relative_to(repo) else Path(path)
    if where.parts[:1] == ("objects",):
        return f"{event} {where.suffix if where.suffix in ('.commit', '.commitmeta') else 'object'}"
    if where.parts[:1] in (("state",), ("tmp",)):
        return f"{event} {where.parts[0]}/*{where.suffix}"
    return f"{event} {where}"


def _kill_points(phases: list[str], spread: int = 6) -> list[int]:
    """Changes to kill before (from 1): the first, middle and last change of every phase (a run of
    changes of one kind) and the change after it, and ``spread`` more across the longest one."""
    runs: list[tuple[int, int]] = []  # [first, last] index of each run
    for index, phase in enumerate(phases):
        if runs and phases[runs[-1][0]] == phase:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    points = {i for first, last in runs for i in (first, (first + last) // 2, last, last + 1)}
    first, last = max(runs, key=lambda run: run[1] - run[0])
    points |= {first + (last - first) * k // (spread + 1) for k in range(1, spread + 1)}
    return sorted(i + 1 for i in points if i < len(phases))  # before change i+1 = after change i


@pytest.mark.slow
def test_prune_killed_before_any_of_its_changes_never_breaks_the_repo(tmp_path: Path) -> None:
    # The history has a followed chain (made partial), an unfollowed ref (evicted whole: commit
    # objects first) and tmp/ debris of an earlier crash, so every step of a sweep changes something.
    template, _ = build_history(tmp_path / "template", files=40)
    when = int(time.time()) - 100 * DAY
    for n in range(3):
        publish(template, tmp_path / "template" / "lab", "os/lab", f"lab{n}", when + n)
    (template.tmp_dir / "tmpobject-left-by-a-crash").write_bytes(b"half an object")
    roots = _roots(template)

    def copy(name: str) -> tuple[Path, Path]:
        work = tmp_path / name
        shutil.copytree(template.path, work / "repo", symlinks=True)
        config = write_config(work, work / "repo", keep_latest=1, keep_younger_than="1d", max_size="1")
        config.write_text(config.read_text() + '[origin]\nrefs = ["os/stable"]\n')
        return work, config

    forker = Forker()
    try:
        # One clean run, traced: the ordered list of every filesystem change a prune makes.
        work, config = copy("traced")
        job: Job = {"cli": ["prune", "--config", str(config)]}
        phases = [_phase(change, work / "repo") for change in forker.changes(job, tmp_path / "trace.json")]
        for step in ("os.remove tmp/*", "open state/*.commitpartial", "os.remove .commit", "os.remove object",
                     "os.remove state/*.commitpartial"):  # fmt: skip
            assert step in phases, f"the template no longer makes a prune {step}: {sorted(set(phases))}"
        shutil.rmtree(work)
        points = _kill_points(phases)
        print(f"prune makes {len(phases)} changes; killed before each of changes {points}")
        for point in points:
            work, config = copy(f"kill{point}")
            what = f"killed before change {point} of {len(phases)}"
            assert forker.kill_before_change({"cli": ["prune", "--config", str(config)]}, point), what
            repo = Repo.open(work / "repo")
            assert_fsck_clean(repo)
            for commit, closure in roots.items():
                assert all(repo.has_object(c, k) for c, k in closure), f"{what}: root {commit} lost objects"
            # The next prune completes what the killed one started.
            assert lanshare("prune", "--config", config) == 0, what
            assert_fsck_clean(repo)
            lab_head = repo.read_ref("os/lab")  # a ref's head always stays
            assert lab_head is not None and repo.missing_objects(lab_head) == [], what
            shutil.rmtree(work)
    finally:
        forker.close()
    assert len(points) >= 20, points


def test_concurrent_commits_and_prunes_lose_nothing(tmp_path: Path) -> None:
    repo, _ = build_history(tmp_path)
    config = write_config(tmp_path, repo.path, keep_latest=1, keep_younger_than="0s", max_size="1")
    pruner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom lanshare.cli import main\n"
            "for _ in range(15):\n    main(['prune', '--config', sys.argv[1]])\n",
            str(config),
        ],
        stdout=subprocess.DEVNULL,
    )
    tree = tmp_path / "t2"
    made = []
    for n in range(10):
        shutil.rmtree(tree, ignore_errors=True)
        (tree / "d").mkdir(parents=True)
        (tree / "d" / "shared").write_bytes(b"shared by every version" * 100)  # reuses existing objects
        (tree / "d" / "new").write_text(str(n))
        assert (
            lanshare("commit", "--repo", repo.path, "--branch", f"os/side{n}", "--tree", tree, "--no-xattrs")
            == 0
        )
        made.append(repo.read_ref(f"os/side{n}"))
    assert pruner.wait() == 0
    for commit in made:
        assert commit is not None and repo.missing_objects(commit) == []
    assert_fsck_clean(repo)
