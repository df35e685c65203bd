"""``lanshare pull`` handing its pull to the running daemon over the control socket (real processes)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lanshare import daemon
from lanshare.config import load_config
from lanshare.control import PullRequest, pull_settings, socket_path
from lanshare.control.client import NoDaemon, request_pull
from lanshare.errors import PullError
from lanshare.ostree.repo import Repo
from lanshare.progress import ProgressUpdate
from tests.conftest import build_tree, ostree
from tests.test_ostree_oracle import lanshare_commit

SOURCE_ROOT = Path(__file__).resolve().parent.parent
REF = "os/stable"


@dataclass
class Serve:
    """A running ``lanshare serve`` process and its files."""

    proc: subprocess.Popen[bytes]
    config: Path
    state: Path
    repo: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://{(self.state / daemon.LAN_ADDRESS_FILE).read_text().strip()}/"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def _env(state: Path) -> dict[str, str]:
    return {**os.environ, "LANSHARE_STATE_DIR": str(state)}


def _write_config(base: Path, repo: Path, sharing: str = "", more: str = "") -> Path:
    """A config for ``repo``: unsigned commits accepted, nothing on mDNS, listeners on free ports;
    ``sharing`` goes into ``[sharing]``, ``more`` (whole tables) after it."""
    config = base / "lanshare.toml"
    config.write_text(
        f'[repo]\npath = "{repo}"\n[trust]\nrequire_signatures = false\n'
        f'[sharing]\nlisten = "127.0.0.1:0"\nadvertise = false\ndiscovery = false\n{sharing}'
        f'[status]\nlisten = "127.0.0.1:0"\n{more}'
    )
    return config


def _serve(base: Path, repo: Path, sharing: str = "", more: str = "") -> Serve:
    base.mkdir(parents=True, exist_ok=True)
    config = _write_config(base, repo, sharing, more)
    state, log = base / "state", base / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lanshare.cli", "serve", "--config", str(config)],
            cwd=SOURCE_ROOT,
            env=_env(state),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    # The log line, not the socket file: a killed daemon's socket stays behind until the next starts.
    while "control socket on" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"lanshare serve did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return Serve(proc, config, state, repo, log)


def _request(server: Serve, sources: tuple[str, ...]) -> PullRequest:
    """What ``lanshare pull --config <the server's> --from SOURCES`` asks its daemon, progress on."""
    settings = pull_settings(load_config(server.config, _env(server.state)))
    return PullRequest(REF, str(server.repo), settings, sources=sources, progress=True)


def _pull(
    config: Path, state: Path, *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lanshare.cli", "pull", "--config", str(config), *map(str, args)],
        cwd=SOURCE_ROOT,
        env={**_env(state), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A publisher repository with one commit on os/stable, holding 1 MB of random files."""
    base = tmp_path_factory.mktemp("publish")
    tree = build_tree(base / "tree", 3)
    for n in range(40):
        (tree / f"random-{n}.bin").write_bytes(os.urandom(25_000))
    repo = base / "repo"
    return repo, lanshare_commit(repo, REF, tree)


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory, published: tuple[Path, str]) -> Iterator[Serve]:
    """The publisher's repository served by a daemon that sends 200 KB/s: a pull takes seconds."""
    server = _serve(tmp_path_factory.mktemp("origin"), published[0], 'max_upload_rate = "200KB"\n')
    yield server
    assert server.stop() == 0, server.log.read_text()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Serve]:
    server = _serve(tmp_path / "client", tmp_path / "client" / "repo")
    yield server
    assert server.stop() == 0, server.log.read_text()


def test_the_pull_is_run_by_the_daemon_and_lands_in_its_repository(
    client: Serve, published: tuple[Path, str]
) -> None:
    source = f"file://{published[0]}"
    result = _pull(client.config, client.state, "--from", source, REF, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["pulled_by"] == "daemon"
    assert document["commit"] == published[1] and document["ref"] == REF
    assert "handed over by a command" in client.log.read_text()
    assert Repo.open(client.repo).read_ref(REF) == published[1]
    ostree("fsck", f"--repo={client.repo}")
    # The daemon regenerated its summary: a stock client of this daemon sees the new ref.
    refs = ostree("summary", "--view", f"--repo={client.repo}").stdout
    assert REF in refs
    # The same pull again: up to date, said in text.
    again = _pull(client.config, client.state, "--from", source, REF)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(
        f"pull: {REF} at {published[1]}: already up to date (pulled by the daemon)"
    )


def test_a_failed_pull_in_the_daemon_fails_the_command_with_its_reason(
    client: Serve, published: tuple[Path, str]
) -> None:
    source = f"file://{published[0]}"
    result = _pull(client.config, client.state, "--from", source, "os/no-such-ref")
    assert result.returncode == 1
    assert result.stderr.startswith("lanshare: error: ") and "os/no-such-ref" in result.stderr
    assert "Traceback" not in result.stderr
    as_json = _pull(client.config, client.state, "--from", source, "os/no-such-ref", "--json")
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["error"]
    # A --from the daemon cannot use is a usage error, exit 2, as when the command pulls itself.
    usage = _pull(client.config, client.state, "--from", "gopher://nowhere/", REF)
    assert usage.returncode == 2, usage.stderr
    assert usage.stderr.startswith("lanshare: --from")
    assert client.proc.poll() is None  # the daemon carries on


def test_without_a_daemon_or_for_another_repository_the_command_pulls_itself(
    tmp_path: Path, client: Serve, published: tuple[Path, str]
) -> None:
    source = f"file://{published[0]}"
    other = tmp_path / "other"
    result = _pull(client.config, client.state, "--repo", other, "--from", source, REF, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pulled_by"] == "command"
    assert Repo.open(other).read_ref(REF) == published[1]
    assert Repo.open(client.repo).read_ref(REF) is None  # the daemon's repository was not touched
    # A setting the daemon does not share (here from the environment): the command pulls itself,
    # with what it read, into the same repository.
    other_settings = {"LANSHARE_PULL_PARALLEL": "2"}
    result = _pull(client.config, client.state, "--from", source, REF, "--json", env=other_settings)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pulled_by"] == "command"
    assert Repo.open(client.repo).read_ref(REF) == published[1]
    # A socket a killed daemon left behind: nobody answers it, so the command pulls itself.
    alone = tmp_path / "alone"
    alone.mkdir()
    config = _write_config(alone, alone / "repo")
    stale = socket.socket(socket.AF_UNIX)
    (alone / "state").mkdir()
    stale.bind(str(socket_path(alone / "state")))
    stale.close()
    result = _pull(config, alone / "state", "--from", source, REF, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pulled_by"] == "command"


def test_the_socket_is_for_the_daemons_user_only_and_guards_its_state_directory(
    client: Serve, tmp_path: Path
) -> None:
    mode = socket_path(client.state).stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    # A second daemon on the same state directory would share its node id and files: refused.
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "lanshare.cli",
            "serve",
            "--config",
            str(_write_config(tmp_path, client.repo)),
        ],
        cwd=SOURCE_ROOT,
        env=_env(client.state),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "another lanshare daemon uses the state directory" in second.stderr.splitlines()[-1]
    assert socket_path(client.state).exists()  # the first daemon's socket is left alone
    assert client.proc.poll() is None


def test_progress_is_streamed_while_the_daemon_pulls(client: Serve, origin: Serve) -> None:
    updates: list[ProgressUpdate] = []
    request = _request(client, (origin.url,))
    document = request_pull(socket_path(client.state), request, updates.append)
    assert document["pulled_by"] == "daemon" and document["objects_fetched"] > 0
    assert len(updates) >= 3  # 1 MB at 200 KB/s, one update every 0.1 s
    done = [u.objects_done for u in updates]
    assert done == sorted(done) and updates[-1].bytes_done > 0
    assert {u.phase for u in updates} <= {"metadata", "content"}


def test_an_interrupted_command_stops_the_daemons_pull_and_the_next_one_completes(
    client: Serve, origin: Serve
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lanshare.cli",
            "pull",
            "--config",
            str(client.config),
            "--from",
            origin.url,
            REF,
        ],
        cwd=SOURCE_ROOT,
        env=_env(client.state),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while "handed over by a command" not in client.log.read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)  # into the transfer (it takes seconds at 200 KB/s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    # The daemon's pull stopped with the command: its transfer is marked failed, nothing moved.
    deadline = time.monotonic() + 30
    while not _transfers(client, "failed"):
        assert time.monotonic() < deadline, client.log.read_text()
        time.sleep(0.1)
    assert Repo.open(client.repo).read_ref(REF) is None
    result = _pull(client.config, client.state, "--from", origin.url, REF, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pulled_by"] == "daemon"
    ostree("fsck", f"--repo={client.repo}")


def _transfers(server: Serve, state: str) -> list[Any]:
    import sqlite3

    with sqlite3.connect(server.state / "index.sqlite") as db:
        return db.execute("SELECT id FROM transfers WHERE state = ?", (state,)).fetchall()


def test_the_client_raises_no_daemon_when_nothing_listens(tmp_path: Path) -> None:
    with pytest.raises(NoDaemon):
        request_pull(socket_path(tmp_path), PullRequest(REF, str(tmp_path / "repo"), "settings"))


def test_a_daemon_that_dies_mid_pull_is_a_pull_error(tmp_path: Path, origin: Serve) -> None:
    doomed = _serve(tmp_path / "doomed", tmp_path / "doomed" / "repo")
    request = _request(doomed, (origin.url,))

    def kill_on_first_update(update: ProgressUpdate) -> None:
        if doomed.proc.poll() is None:
            doomed.proc.kill()
            doomed.proc.wait()

    with pytest.raises(PullError, match="daemon"):
        request_pull(socket_path(doomed.state), request, kill_on_first_update)
    ostree("fsck", f"--repo={doomed.repo}")
    # Its socket stays behind; the next daemon on that state directory replaces it.
    assert socket_path(doomed.state).exists()
    again = _serve(tmp_path / "doomed", doomed.repo)
    assert again.stop() == 0, again.log.read_text()


def test_a_state_directory_deeper_than_a_socket_name_allows_still_gets_its_socket(
    tmp_path: Path, published: tuple[Path, str]
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(str(socket_path(deep / "state"))) > 108  # sockaddr_un's limit
    server = _serve(deep, deep / "repo")
    try:
        result = _pull(server.config, server.state, "--from", f"file://{published[0]}", REF, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["pulled_by"] == "daemon"
    finally:
        assert server.stop() == 0, server.log.read_text()
    assert not socket_path(server.state).exists()  # removed at a clean stop


def test_lanshare_upgrade_hands_its_pulls_to_the_daemon_too(tmp_path: Path) -> None:
    publisher = tmp_path / "publisher"
    v1 = lanshare_commit(publisher, REF, build_tree(tmp_path / "tree1", 1), "--version", "1")
    v2 = lanshare_commit(publisher, REF, build_tree(tmp_path / "tree2", 2), "--version", "2")
    base = tmp_path / "machine"
    base.mkdir()
    hook, deployed = base / "hook", base / "deployed"
    hook.write_text('#!/bin/sh\necho "$LANSHARE_COMMIT" >> "$(dirname "$0")/hook.log"\n')
    hook.chmod(0o755)
    deployed.write_text(f"{v1}\n")
    # Origin polling off (one day between polls), so the only pull is the one upgrade asks for.
    server = _serve(
        base,
        base / "repo",
        "",
        f'[origin]\nurl = "file://{publisher}"\npoll_interval = "1d"\n'
        f'[upgrade]\ndeploy_command = ["{hook}"]\ndeployed_commit_file = "{deployed}"\n',
    )
    try:
        result = subprocess.run(
            [sys.executable, "-m", "lanshare.cli", "upgrade", "--config", str(server.config)],
            cwd=SOURCE_ROOT,
            env=_env(server.state),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert (base / "hook.log").read_text().split() == [v2]
        assert "handed over by a command" in server.log.read_text()
        assert Repo.open(server.repo).read_ref(REF) == v2
    finally:
        assert server.stop() == 0, server.log.read_text()


def test_a_pull_asked_during_the_daemons_own_round_waits_for_it_and_fetches_nothing_twice(
    tmp_path: Path, origin: Serve
) -> None:
    # No peers and no discovery: the daemon's first origin round starts at once, and takes seconds.
    more = f'[origin]\nurl = "{origin.url}"\nrefs = ["{REF}"]\npoll_interval = "1d"\n'
    server = _serve(tmp_path / "m", tmp_path / "m" / "repo", "", more)
    try:
        result = _pull(server.config, server.state, REF)
        assert result.returncode == 0, result.stderr
        assert "lanshare: waiting for the daemon's own pull to finish" in result.stderr
        # The round brought the commit; the command's pull, run after it, had nothing to fetch.
        assert "already up to date (pulled by the daemon)" in result.stdout, result.stdout
    finally:
        assert server.stop() == 0, server.log.read_text()


def test_a_state_directory_whose_socket_name_is_taken_stops_the_daemon_with_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    socket_path(state).mkdir(parents=True)  # something that is not a socket, and not removable
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lanshare.cli",
            "serve",
            "--config",
            str(_write_config(tmp_path, tmp_path / "repo")),
        ],
        cwd=SOURCE_ROOT,
        env=_env(state),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lanshare: error: cannot replace ") and "control.sock" in last, result.stderr
    assert "Traceback" not in result.stderr
