"""``lanshare upgrade`` walking a real checkpoint chain pulled over real HTTP, with a real deploy hook."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lanshare.deploy.deployed import parse_status
from lanshare.index.db import open_index
from lanshare.index.models import Commit, Ref
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.ostree.summary import parse_summary
from lanshare.upgrade import parse_deployed
from tests import hostile_servers as hs
from tests.conftest import build_tree, lanshare, ostree
from tests.gpg_fixtures import GpgKeys
from tests.test_serve import _start as start_daemon
from tests.test_serve import _stop as stop_daemon

BASE_TIME = 1_700_000_000

# --- the publisher: v1 → v2 (checkpoint) → v3 (continue on os/stable-v2) → v4 on os/stable-v2 --------


@dataclass(frozen=True)
class Chain:
    """The origin's repository, served over HTTP, and its commits by version."""

    repo: Path
    url: str
    keyring: Path
    v1: str
    v2: str
    v3: str
    v4: str


def _commit(repo: Path, tree: Path, version: int, branch: str, sign: tuple[str, ...], *extra: str) -> str:
    args: list[str | Path] = [
        "commit",
        "--repo",
        repo,
        "--branch",
        branch,
        "--tree",
        tree,
        "--version",
        str(version),
    ]
    args += ["--timestamp", str(BASE_TIME + version * 86_400), "--no-xattrs", *sign, *extra]
    assert lanshare(*args) == 0
    head = Repo.open(repo).read_ref(branch)
    assert head is not None
    return head


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, gpg_keys: GpgKeys) -> Iterator[Chain]:
    """Publish the chain once, GPG-signed, and serve it with ``python -m http.server`` (a plain origin)."""
    base = tmp_path_factory.mktemp("origin")
    repo = base / "repo"
    sign = ("--gpg-sign", gpg_keys.trusted.key_id, "--gpg-homedir", str(gpg_keys.homedir))
    v1 = _commit(repo, build_tree(base / "t1", 1), 1, "os/stable", sign)
    v2 = _commit(repo, build_tree(base / "t2", 2), 2, "os/stable", sign, "--checkpoint")
    v3 = _commit(
        repo, build_tree(base / "t3", 3), 3, "os/stable", sign, "--checkpoint-target", "os/stable-v2"
    )
    v4 = _commit(
        repo, build_tree(base / "t4", 4), 4, "os/stable-v2", sign,
        "--parent", "none", "--checkpoint-source", f"os/stable@{v3}",
    )  # fmt: skip
    with serve_repo(repo) as url:
        yield Chain(repo, url, gpg_keys.trusted.keyring, v1, v2, v3, v4)


@contextmanager
def serve_repo(repo: Path) -> Iterator[str]:
    """Serve ``repo`` with ``python -m http.server`` on 127.0.0.1 (a plain origin); yields its URL."""
    port = _free_port()
    cmd = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(repo), str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "http.server did not start"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(10)


# --- the machine being upgraded -------------------------------------------------------------------

HOOK = """#!/bin/sh
# A deploy hook that records its calls; it fails (status 3) for a version listed in fail-versions.
here=$(dirname "$0")
if grep -qx "$LANSHARE_VERSION" "$here/fail-versions" 2>/dev/null; then
    echo "preparing $LANSHARE_COMMIT" >&2
    echo "deploy failed: no space left on /sysroot" >&2
    exit 3
fi
echo "$LANSHARE_COMMIT $LANSHARE_REF $LANSHARE_VERSION $LANSHARE_REPO" >> "$here/hook.log"
echo "hook deployed $LANSHARE_VERSION"
"""


@dataclass
class Machine:
    """A machine's lanshare configuration, cache, deploy hook and deployed-commit file."""

    base: Path
    config: Path
    deployed_file: Path

    @property
    def repo(self) -> Repo:
        return Repo.open(self.base / "repo")

    def hook_calls(self) -> list[str]:
        log = self.base / "hook.log"
        return log.read_text().splitlines() if log.exists() else []

    def fail_version(self, *versions: str) -> None:
        (self.base / "fail-versions").write_text("".join(f"{v}\n" for v in versions))

    def deployed(self) -> str:
        return self.deployed_file.read_text().strip()

    def call(self, commit: str, ref: str, version: int) -> str:
        """The hook log line a deployment of ``commit`` writes."""
        return f"{commit} {ref} {version} {(self.base / 'repo').resolve()}"


def make_machine(
    base: Path, chain: Chain, upgrade: str, *, deployed: str | None = None, sources: str | None = None
) -> Machine:
    """A machine pulling from the origin (or ``sources``, as TOML), with ``upgrade`` as its ``[upgrade]``."""
    base.mkdir()
    hook = base / "deploy-hook"
    hook.write_text(HOOK)
    hook.chmod(0o755)
    deployed_file = base / "deployed"
    if deployed is not None:
        deployed_file.write_text(f"  {deployed}\n")  # whitespace around it is tolerated
    config = base / "lanshare.toml"
    config.write_text(
        f'[repo]\npath = "{base / "repo"}"\n'
        f'[database]\nurl = "sqlite:///{base / "index.sqlite"}"\n'
        + (sources if sources is not None else f'[origin]\nurl = "{chain.url}"\n')
        + f'[trust]\ngpg_keyring = "{chain.keyring}"\n'
        + f"[upgrade]\n{upgrade.format(hook=hook, deployed=deployed_file)}"
    )
    return Machine(base, config, deployed_file)


DEPLOY_WITH_FILE = 'deploy_command = ["{hook}"]\ndeployed_commit_file = "{deployed}"\n'


@pytest.fixture
def machine(tmp_path: Path, chain: Chain) -> Machine:
    """A machine running v1, with an empty cache, the hook and a deployed-commit file."""
    return make_machine(tmp_path / "machine", chain, DEPLOY_WITH_FILE, deployed=chain.v1)


def upgrade(m: Machine, *args: str) -> int:
    return lanshare("upgrade", "--config", m.config, *args)


# --- walking the chain ----------------------------------------------------------------------------


def test_successive_runs_deploy_checkpoint_then_ref_switch_then_head(
    machine: Machine, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    assert upgrade(machine) == 10
    out = capsys.readouterr().out
    assert f"deploying {chain.v2} on os/stable, version 2: checkpoint" in out
    assert "hook deployed 2" in out and "2 more step(s)" in out
    assert machine.deployed() == chain.v2
    assert machine.hook_calls() == [machine.call(chain.v2, "os/stable", 2)]
    # The step was pulled whole and verified before the hook ran; v3 is held so the path is known.
    repo = machine.repo
    assert repo.missing_objects(chain.v2) == [] and not repo.is_partial(chain.v2)
    # The deployed commit was only needed to compute the path: its commit object alone was fetched.
    assert repo.has_object(chain.v1, ObjectType.COMMIT) and repo.is_partial(chain.v1)

    assert upgrade(machine) == 10
    assert f"deploying {chain.v3} on os/stable, version 3: head of os/stable; continue on os/stable-v2" in (
        capsys.readouterr().out
    )
    assert machine.deployed() == chain.v3

    assert upgrade(machine) == 0
    out = capsys.readouterr().out
    assert f"deploying {chain.v4} on os/stable-v2, version 4" in out and "(switched from os/stable)" in out
    assert f"done: deployed {chain.v4}" in out
    assert machine.deployed() == chain.v4
    assert machine.hook_calls() == [
        machine.call(chain.v2, "os/stable", 2),
        machine.call(chain.v3, "os/stable", 3),
        machine.call(chain.v4, "os/stable-v2", 4),
    ]
    # Already at the end: nothing deployed, the hook is not called again.
    assert upgrade(machine) == 0
    assert "up to date" in capsys.readouterr().out
    assert len(machine.hook_calls()) == 3
    for commit in (chain.v2, chain.v3, chain.v4):
        assert machine.repo.missing_objects(commit) == []
    assert "no errors found" in ostree("fsck", f"--repo={machine.repo.path}").stdout


def test_the_exit_statuses_reach_the_calling_process(machine: Machine, chain: Chain) -> None:
    # What a boot-time unit sees: the real console entry point in its own process.
    cli = [sys.executable, "-m", "lanshare.cli"]
    helptext = subprocess.run([*cli, "upgrade", "--help"], capture_output=True, text=True, check=True).stdout
    assert "10 a step was deployed and more" in " ".join(helptext.split())
    run = subprocess.run([*cli, "upgrade", "--config", str(machine.config)], capture_output=True, text=True)
    assert run.returncode == 10, run.stderr
    assert machine.hook_calls() == [machine.call(chain.v2, "os/stable", 2)]


def test_all_walks_the_whole_chain_in_one_run(
    machine: Machine, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    assert upgrade(machine, "--all", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "done" and report["error"] is None
    assert report["deployed_before"] == chain.v1 and report["ref"] == "os/stable"
    assert [s["commit"] for s in report["steps_deployed"]] == [chain.v2, chain.v3, chain.v4]
    assert [s["ref"] for s in report["steps_deployed"]] == ["os/stable", "os/stable", "os/stable-v2"]
    assert report["remaining"] == []
    assert machine.deployed() == chain.v4
    assert [line.split()[0] for line in machine.hook_calls()] == [chain.v2, chain.v3, chain.v4]
    # What the walk pulled is visible to peers and stock clients (summary) and to `lanshare status`.
    summary = parse_summary((machine.repo.path / "summary").read_bytes())
    assert {r.name: r.checksum for r in summary.refs}["os/stable-v2"] == chain.v4
    index = open_index(f"sqlite:///{machine.base / 'index.sqlite'}")
    try:
        with Session(index) as session:
            refs = {r.name: r.commit for r in session.scalars(select(Ref))}
            assert refs["os/stable-v2"] == chain.v4
            assert session.get(Commit, chain.v4) is not None
    finally:
        index.dispose()


def test_one_step_json_lists_what_remains(
    machine: Machine, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    assert upgrade(machine, "--json") == 10
    report = json.loads(capsys.readouterr().out)  # the hook's stdout did not end up in the document
    assert report["status"] == "more"
    assert [s["commit"] for s in report["steps_deployed"]] == [chain.v2]
    assert [(s["commit"], s["version"]) for s in report["remaining"]] == [(chain.v3, "3"), (chain.v4, "4")]


def test_a_lan_peer_serves_the_walk_and_the_cache_finishes_it_offline(
    tmp_path: Path, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    # The peer is another machine's lanshare daemon holding the chain; this one has no origin.
    shutil.copytree(chain.repo, tmp_path / "peer-repo", symlinks=True)
    (tmp_path / "peer").mkdir()
    peer = start_daemon(tmp_path / "peer", tmp_path / "peer-repo")
    try:
        sources = f'[sharing]\npeers = ["{peer.url}"]\n'
        m = make_machine(tmp_path / "m", chain, DEPLOY_WITH_FILE, deployed=chain.v1, sources=sources)
        assert upgrade(m) == 10
        assert m.deployed() == chain.v2
    finally:
        assert stop_daemon(peer) == 0
    # Offline now: the refs cannot be refreshed, but the rest of the path is in the cache.
    capsys.readouterr()
    assert upgrade(m, "--all") == 0
    assert "could not refresh os/stable" in capsys.readouterr().err
    assert [line.split()[0] for line in m.hook_calls()] == [chain.v2, chain.v3, chain.v4]
    assert m.deployed() == chain.v4


def test_a_peer_serving_corrupt_commits_is_dropped_and_the_origin_serves(
    tmp_path: Path, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    peer = hs.FakePeer(Repo.open(chain.repo), archive_behaviour=hs.corrupt_commits)
    with peer.serve() as server:
        sources = f'[sharing]\npeers = ["{server.url}"]\n[origin]\nurl = "{chain.url}"\n'
        m = make_machine(tmp_path / "m", chain, DEPLOY_WITH_FILE, deployed=chain.v1, sources=sources)
        assert upgrade(m, "--all") == 0
    # Commit objects (the commit-only history included) all came verified from the origin.
    assert [line.split()[0] for line in m.hook_calls()] == [chain.v2, chain.v3, chain.v4]
    assert any(path.endswith(".commit") for path in peer.archive.requests)
    assert lanshare("fsck", "--repo", m.repo.path, "--gpg-keyring", chain.keyring) == 0


def test_a_failing_hook_stops_the_walk_and_records_nothing(
    machine: Machine, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    machine.fail_version("3")
    assert upgrade(machine, "--all", "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "failed"
    assert [s["commit"] for s in report["steps_deployed"]] == [chain.v2]
    assert "exited with status 3" in report["error"] and "no space left on /sysroot" in report["error"]
    # v2 was deployed and recorded; v3 failed, so the file still says v2 and the walk stopped there.
    assert machine.deployed() == chain.v2
    assert machine.hook_calls() == [machine.call(chain.v2, "os/stable", 2)]

    # Without --json the error is one line on stderr; the next run retries the same step.
    assert upgrade(machine) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exited with status 3" in err and chain.v3 in err
    assert machine.deployed() == chain.v2
    machine.fail_version()
    assert upgrade(machine) == 10
    assert machine.deployed() == chain.v3
    assert machine.hook_calls()[-1] == machine.call(chain.v3, "os/stable", 3)


def test_already_at_the_head_does_not_call_the_hook(
    tmp_path: Path, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    m = make_machine(tmp_path / "m", chain, DEPLOY_WITH_FILE, deployed=chain.v4)
    assert upgrade(m, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "done" and report["steps_deployed"] == [] and report["remaining"] == []
    assert report["ref"] == "os/stable-v2"
    assert m.hook_calls() == [] and m.deployed() == chain.v4


def test_a_deployed_commit_nobody_knows_is_a_clear_error(
    tmp_path: Path, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    unknown = "ab" * 32
    m = make_machine(tmp_path / "m", chain, DEPLOY_WITH_FILE, deployed=unknown)
    assert upgrade(m) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"deployed commit {unknown}" in err and "is unknown" in err and "no source has it" in err
    assert m.hook_calls() == [] and m.deployed() == unknown
    # Told which ref it is on, the walk goes back through the whole history and still says so.
    assert upgrade(m, "--ref", "os/stable") == 1
    assert f"{unknown} is not on os/stable" in capsys.readouterr().err


def test_an_unreadable_deployed_commit_file_is_a_failure(
    tmp_path: Path, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    m = make_machine(tmp_path / "m", chain, DEPLOY_WITH_FILE)
    m.deployed_file.write_text("not a checksum\n")
    assert upgrade(m) == 1
    assert "expected a 64-hex commit checksum" in capsys.readouterr().err
    m.deployed_file.unlink()
    assert upgrade(m) == 1
    assert "does not exist" in capsys.readouterr().err
    assert upgrade(m, "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "failed" and report["deployed_before"] is None
    assert "does not exist" in report["error"] and report["steps_deployed"] == []


def test_without_a_way_to_read_the_deployed_commit_it_is_a_config_error(
    tmp_path: Path, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    m = make_machine(tmp_path / "m", chain, 'deploy_command = ["{hook}"]\n')
    assert upgrade(m) == 2
    err = capsys.readouterr().err
    assert "deployed_commit_file" in err and "deployed_commit_command" in err
    # --from names the commit instead; with nowhere to record it, the hook is responsible.
    assert upgrade(m, "--from", chain.v3) == 0
    assert m.hook_calls() == [m.call(chain.v4, "os/stable-v2", 4)]


def test_without_a_deploy_command_the_step_is_pulled_but_not_recorded(
    tmp_path: Path, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    m = make_machine(tmp_path / "m", chain, 'deployed_commit_file = "{deployed}"\n', deployed=chain.v1)
    assert upgrade(m) == 2
    assert 'set [upgrade] deploy = "ostree-admin" or deploy_command' in capsys.readouterr().err
    assert upgrade(m, "--json") == 2
    assert json.loads(capsys.readouterr().out)["status"] == "failed"
    assert m.deployed() == chain.v1
    assert m.repo.has_object(chain.v2, ObjectType.COMMIT) and not m.repo.is_partial(chain.v2)


# --- reading the deployed commit from a command -----------------------------------------------------
# rpm-ostree and `ostree admin` need a booted OSTree system, which these machines are not, so their
# output is replayed from realistic samples (formats of rpm-ostree 2023.x and libostree 2022.x).

C1 = "3e5f2a0c4b6d8e9f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081"
C2 = "7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b"
C3 = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"


def rpm_ostree_status(*, layered: bool = False) -> str:
    booted = {
        "id": f"fedora-coreos-{C2}.0",
        "osname": "fedora-coreos",
        "serial": 0,
        "checksum": C3 if layered else C2,
        "version": "38.20230902.3.0",
        "timestamp": 1693841516,
        "origin": "fedora:fedora/x86_64/coreos/stable",
        "booted": True,
        "staged": False,
        "pinned": False,
        "unlocked": "none",
        "gpg-enabled": True,
        "requested-packages": ["htop"] if layered else [],
        "base-commit-meta": {"version": "38.20230902.3.0"},
    }
    if layered:
        booted["base-checksum"] = C2
    staged = {**booted, "checksum": C1, "booted": False, "staged": True, "id": f"fedora-coreos-{C1}.0"}
    staged.pop("base-checksum", None)
    status = {"deployments": [staged, booted], "transaction": None, "cached-update": None}
    return json.dumps(status, indent=2)


OSTREE_ADMIN_STATUS = f"""\
  debian {C1}.1 (pending)
    Version: 12.2
    origin refspec: debian:os/stable-v2
* debian {C2}.0
    Version: 12.1
    origin refspec: debian:os/stable
    GPG: Signature made Thu 02 Nov 2023 10:00:00 UTC using EDDSA key ID 0123456789ABCDEF
  debian {C3}.0 (rollback)
    Version: 12.0
    origin refspec: debian:os/stable
"""


def test_parse_a_bare_checksum() -> None:
    assert parse_deployed(f"\n  {C2}\t\n") == (C2, None)


def test_parse_rpm_ostree_status_takes_the_booted_deployment_and_its_origin() -> None:
    assert parse_deployed(rpm_ostree_status()) == (C2, "fedora/x86_64/coreos/stable")
    # With layered packages the booted checksum is a local commit; the base one is on the ref.
    assert parse_deployed(rpm_ostree_status(layered=True)) == (C2, "fedora/x86_64/coreos/stable")


def test_a_deployment_listed_before_the_booted_one_is_pending() -> None:
    # What makes the next run say "reboot needed" instead of deploying the same step again.
    assert parse_status(rpm_ostree_status(), "rpm-ostree").pending == C1
    assert parse_status(OSTREE_ADMIN_STATUS, "ostree admin").pending == C1
    without_staged = json.loads(rpm_ostree_status())
    without_staged["deployments"] = without_staged["deployments"][1:]
    assert parse_status(json.dumps(without_staged), "rpm-ostree").pending is None


def test_parse_ostree_admin_status_takes_the_starred_deployment() -> None:
    assert parse_deployed(OSTREE_ADMIN_STATUS) == (C2, "os/stable")
    no_origin = f"* fedora {C2}.3\n    Version: 39\n    origin: <unknown origin type>\n"
    assert parse_deployed(no_origin) == (C2, None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no deployments found\n",
        '{"deployments": []}',
        '{"deployments": [{"booted": true, "checksum": "abc"}]}',
        "{not json",
        "* debian nothing-here.0\n",
        C2[:-1],
    ],
)
def test_unparseable_status_is_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_deployed(text)


def test_deployed_commit_command_output_drives_the_walk(
    tmp_path: Path, chain: Chain, capsys: pytest.CaptureFixture[str]
) -> None:
    status = tmp_path / "status.txt"
    status.write_text(f"* debian {chain.v1}.0\n    Version: 1\n    origin refspec: origin:os/stable\n")
    upgrade_keys = f'deploy_command = ["{{hook}}"]\ndeployed_commit_command = ["cat", "{status}"]\n'
    m = make_machine(tmp_path / "m", chain, upgrade_keys)
    assert upgrade(m) == 10
    captured = capsys.readouterr()
    assert m.hook_calls() == [m.call(chain.v2, "os/stable", 2)]
    # The OS tool still reports v1 (no reboot here): said, not treated as a failure.
    assert f"still reports {chain.v1}" in captured.err
    status.write_text("ostree: error: not booted into an OSTree system\n")
    assert upgrade(m) == 1
    err = capsys.readouterr().err
    assert "listing deployments like '* OS CHECKSUM.SERIAL'" in err
    assert "got 'ostree: error: not booted into an OSTree system'" in err


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ('deploy = "rpm-ostree"', 'upgrade.deploy: expected "ostree-admin" (or deploy_command'),
        ('reboot = "sometimes"', 'upgrade.reboot: expected "never", "after-step" or a window like'),
        ('reboot = "Mon..Fry 02:00-04:00"', "upgrade.reboot: expected"),
        (
            'deploy = "ostree-admin"\ndeploy_command = "/bin/true"',
            "expected at most one of upgrade.deploy and",
        ),
        ('os = "a/b"', "upgrade.os: expected an OSTree stateroot name"),
    ],
)
def test_bad_upgrade_keys_are_one_line_config_errors(
    tmp_path: Path, keys: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "lanshare.toml"
    config.write_text(f"[upgrade]\n{keys}\n")
    assert lanshare("upgrade", "--config", config) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1, err
