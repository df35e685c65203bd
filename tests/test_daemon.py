"""The daemon an admin runs: start on nothing, talk to systemd, stop cleanly, keep state, refuse bad config.

Real parts only: ``lanshare serve`` as a process, systemd's notify protocol over a real Unix
datagram socket, a real HTTP origin, SQLite.  The one thing simulated is the power supply: this
machine has no battery, so the battery test points the daemon at a fake ``/sys`` tree.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from lanshare import background, daemon, sdnotify
from lanshare.background import Background
from lanshare.index.db import open_index
from lanshare.index.models import Commit, Pin, Transfer, TransferState
from lanshare.ostree.repo import Repo
from lanshare.power import SharingSwitch, on_battery
from lanshare.pull import PullOptions, SourceSpec, TrustPolicy, pull
from tests.fleet import (
    Chain,
    load,
    publish_chain,
    running_daemon,
    serve_directory,
    static_origin,
    write_config,
)
from tests.gpg_fixtures import GpgKeys

SOURCE_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, gpg_keys: GpgKeys) -> Chain:
    return publish_chain(tmp_path_factory.mktemp("publish"), gpg_keys)


@pytest.fixture
def origin(chain: Chain) -> Iterator[str]:
    """The chain served by Python's own HTTP server, in a thread (an origin for processes)."""
    yield from serve_directory(chain.repo)


# --- systemd's notify protocol ----------------------------------------------------------------------


class NotifySocket:
    """A service manager's end of $NOTIFY_SOCKET: a real Unix datagram socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)

    def expect(self, wanted: str, timeout: float = 30) -> list[str]:
        """Messages received until one holds the line ``wanted``; fails after ``timeout``."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                pytest.fail(f"no {wanted} from the daemon; got {seen}")
            seen.append(message)
            if wanted in message.split("\n"):
                return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short path: sun_path holds 108 bytes and pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="lanshare-notify-") as directory:
        receiver = NotifySocket(os.path.join(directory, "notify"))
        yield receiver
        receiver.close()


def test_notify_reaches_a_real_socket_and_is_a_no_op_without_one(notify_socket: NotifySocket) -> None:
    assert sdnotify.notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": notify_socket.path})
    assert notify_socket.expect("READY=1") == ["READY=1\nSTATUS=up"]
    assert not sdnotify.notify("READY=1", {})


def test_notify_to_an_abstract_socket() -> None:
    name = f"lanshare-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        assert sdnotify.notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name})
        assert receiver.recv(100) == b"WATCHDOG=1"


def test_watchdog_interval_is_half_of_watchdogsec_and_only_for_the_watched_process() -> None:
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    own = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_interval(own) == 15.0
    assert sdnotify.watchdog_interval({**own, "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


# --- lanshare serve as a process --------------------------------------------------------------------


def _environment(base: Path, **extra: str) -> dict[str, str]:
    """Only what a test must change: state dir, free loopback ports, no mDNS on real interfaces."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANSHARE_", "NOTIFY_", "WATCHDOG_"))}
    return env | {
        "LANSHARE_STATE_DIR": str(base / "state"),
        "LANSHARE_SHARING_LISTEN": "127.0.0.1:0",
        "LANSHARE_STATUS_LISTEN": "127.0.0.1:0",
        "LANSHARE_SHARING_ADVERTISE": "false",
        "LANSHARE_SHARING_DISCOVERY": "false",
        **extra,
    }


def _serve(base: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    config = base / "empty.toml"  # every key at its embedded default
    config.touch()
    log = open(base / "serve.log", "ab")  # noqa: SIM115 -- the child keeps it
    with log:
        return subprocess.Popen(
            [sys.executable, "-m", "lanshare.cli", "serve", "--config", str(config)],
            cwd=SOURCE_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _terminate(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_from_an_empty_state_dir_notifies_systemd_stops_cleanly_and_keeps_its_state(
    tmp_path: Path,
    chain: Chain,
    origin: str,
    notify_socket: NotifySocket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = tmp_path / "state"
    env = _environment(tmp_path, NOTIFY_SOCKET=notify_socket.path, WATCHDOG_USEC="400000")
    proc = _serve(tmp_path, env)
    try:
        # READY=1 only once the listeners are up: the LAN address is already written.
        notify_socket.expect("READY=1")
        lan = (state / daemon.LAN_ADDRESS_FILE).read_text().strip()
        notify_socket.expect("WATCHDOG=1")  # every 0.2 s: half of WatchdogSec
        info = _get_json(f"http://{lan}/lanshare/v1/info")
        assert info["refs"] == {}
        # Embedded defaults: repository and SQLite index inside the state directory.
        assert (state / "repo" / "config").is_file() and (state / "index.sqlite").is_file()
        # An admin pulls with the CLI while the daemon runs; the daemon serves the result at once.
        for name, value in env.items():
            if name.startswith("LANSHARE_"):
                monkeypatch.setenv(name, value)
        from tests.conftest import lanshare

        config = str(tmp_path / "empty.toml")
        keyring = ["--config", config]
        monkeypatch.setenv("LANSHARE_TRUST_GPG_KEYRING", str(chain.keyring))
        assert lanshare("pull", "os/stable", "--from", origin, *keyring) == 0
        assert _get_json(f"http://{lan}/lanshare/v1/info")["refs"] == {"os/stable": chain.commits["v4"]}
        assert lanshare("pin", chain.commits["v4"], "--reason", "lab", *keyring) == 0
        node_id = info["node_id"]
        assert _terminate(proc) == 0, (tmp_path / "serve.log").read_text()
        notify_socket.expect("STOPPING=1")
        assert not (state / daemon.LAN_ADDRESS_FILE).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # A pull killed with SIGKILL leaves its transfer "running"; simulated here with the row itself.
    engine = open_index(f"sqlite:///{state / 'index.sqlite'}")
    with Session(engine) as session, session.begin():
        session.add(Transfer(commit=chain.commits["v5"], ref="os/stable-v2", source="origin"))
    proc = _serve(tmp_path, env)
    try:
        notify_socket.expect("READY=1")
        lan = (state / daemon.LAN_ADDRESS_FILE).read_text().strip()
        info = _get_json(f"http://{lan}/lanshare/v1/info")
        assert info["node_id"] == node_id
        assert info["refs"] == {"os/stable": chain.commits["v4"]}
        with Session(engine) as session:
            assert session.get(Commit, chain.commits["v4"]) is not None
            assert [(p.commit, p.reason) for p in session.scalars(select(Pin))] == [
                (chain.commits["v4"], "lab")
            ]
            states = {t.commit: (t.state, t.error) for t in session.scalars(select(Transfer))}
        assert states[chain.commits["v4"]] == (TransferState.DONE, None)
        stale_state, stale_error = states[chain.commits["v5"]]
        assert stale_state is TransferState.FAILED and "interrupted" in (stale_error or "")
        assert _terminate(proc) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        engine.dispose()
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_bad_config_refuses_to_start_with_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "lanshare.toml"
    config.write_text('[retention]\nmax_size = "lots"\n')
    result = subprocess.run(
        [sys.executable, "-m", "lanshare.cli", "serve", "--config", str(config)],
        cwd=SOURCE_ROOT,
        env=_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f'lanshare: {config}: retention.max_size: expected a size greater than zero like "20GiB", '
        '"500MB" or a number of bytes, got "lots"'
    ]
    assert not (tmp_path / "state").exists()  # nothing created


# --- background work, in-process ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_origin_poll_follows_the_chain_and_retention_runs_after_the_pull(
    tmp_path: Path, chain: Chain
) -> None:
    async with static_origin(chain.repo) as url:
        write_config(
            tmp_path,
            chain.keyring,
            f'[origin]\nurl = "{url}"\nrefs = ["os/stable"]\n'
            # A tiny budget: only what retention must keep stays in full.
            '[retention]\nkeep_latest = 1\nkeep_younger_than = "0s"\nmax_size = 1\n',
        )
        config = load(tmp_path)
        # This machine held v3 in full before (it deployed it); nothing keeps it once v4 is in.
        options = PullOptions(trust=TrustPolicy(gpg_keyring=chain.keyring))
        repo = Repo.init(config.repo.path)
        await pull(repo, chain.commits["v3"], [SourceSpec(url)], ref="os/stable", options=options)
        async with running_daemon(config) as node:
            work = node.app[daemon.BACKGROUND]
            while work.rounds < 1:
                await asyncio.sleep(0.1)
            report = work.last_report
    assert report is not None and report.errors == []
    assert repo.list_refs() == {"os/stable": chain.commits["v4"], "os/stable-v2": chain.commits["v5"]}
    for complete in (*chain.checkpoints, chain.commits["v5"]):
        assert not repo.is_partial(complete) and repo.missing_objects(complete) == []
    # History is kept as commit objects only: v1 fetched that way, v3 pruned down to it.
    for history in (chain.commits["v1"], chain.commits["v3"]):
        assert repo.is_partial(history)
    assert repo.missing_objects(chain.commits["v3"]) != []
    engine = open_index(config.database.url)
    with Session(engine) as session:
        indexed = {c.checksum: c.complete for c in session.scalars(select(Commit))}
    engine.dispose()
    assert indexed[chain.commits["v4"]] and indexed[chain.commits["v2"]]
    assert indexed[chain.commits["v3"]] is False


@pytest.mark.asyncio
async def test_an_unreachable_origin_is_logged_and_the_daemon_keeps_serving(
    tmp_path: Path, chain: Chain, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}/"
    write_config(tmp_path, chain.keyring, f'[origin]\nurl = "{dead}"\nrefs = ["os/stable"]\n')
    async with running_daemon(load(tmp_path)) as node:
        work: Background = node.app[daemon.BACKGROUND]
        while work.rounds < 1:
            await asyncio.sleep(0.1)
        assert work.last_report is not None and "os/stable" in work.last_report.errors[0]
        info = await asyncio.to_thread(_get_json, node.url + "lanshare/v1/info")
        assert info["refs"] == {}
    assert any("origin poll: os/stable" in r.getMessage() for r in caplog.records)


def test_jitter_stays_within_ten_percent() -> None:
    values = [background.jittered(100.0) for _ in range(1000)]
    assert 90.0 <= min(values) < 95.0 and 105.0 < max(values) <= 110.0


# --- share_on_battery (simulated: this machine has no battery) ----------------------------------------


def _supply(root: Path, name: str, **files: str) -> None:
    directory = root / "class" / "power_supply" / name
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in files.items():
        (directory / key).write_text(value + "\n")


def test_on_battery_reads_the_power_supply_class(tmp_path: Path) -> None:
    assert not on_battery(tmp_path / "no-sys")
    _supply(tmp_path, "AC", type="Mains", online="1")
    assert not on_battery(tmp_path)  # a desktop: mains only
    _supply(tmp_path, "BAT0", type="Battery", present="1", status="Charging")
    assert not on_battery(tmp_path)
    _supply(tmp_path, "AC", online="0")
    assert on_battery(tmp_path)
    # No mains supply listed at all: the battery's own status says it.
    laptop = tmp_path / "other"
    _supply(laptop, "BAT1", type="Battery", status="Discharging")
    assert on_battery(laptop)


@pytest.mark.asyncio
async def test_on_battery_the_lan_listener_answers_503_until_mains_returns(
    tmp_path: Path, chain: Chain
) -> None:
    sys_root = tmp_path / "sys"
    _supply(sys_root, "AC", type="Mains", online="0")
    _supply(sys_root, "BAT0", type="Battery", present="1", status="Discharging")
    write_config(tmp_path, chain.keyring, "share_on_battery = false\n")
    config = load(tmp_path)
    app = daemon.create_app(config)
    app[daemon.SHARING] = switch = SharingSwitch(config.sharing, sys_root=sys_root)
    told: list[bool] = []

    async def listener(paused: bool) -> None:
        told.append(paused)

    async with running_daemon(config, app) as node:
        switch.subscribe(listener)  # as mDNS advertising does
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(_get_json, node.url + "lanshare/v1/info")
        refused.value.close()  # it holds the connection
        assert refused.value.code == 503 and int(refused.value.headers["Retry-After"]) > 0
        _supply(sys_root, "AC", online="1")
        assert await switch.check()
        info = await asyncio.to_thread(_get_json, node.url + "lanshare/v1/info")
        assert info["refs"] == {}
    assert told == [True, False]


@pytest.mark.asyncio
async def test_metered_pauses_sharing_and_unknown_keeps_it_on(tmp_path: Path) -> None:
    write_config(tmp_path, tmp_path / "unused-keyring", "share_on_metered = false\n")
    sharing = load(tmp_path).sharing
    # NetworkManager is not running here: its answer is injected.
    metered = SharingSwitch(sharing, sys_root=tmp_path, metered=lambda: True)
    assert await metered.check() and metered.paused
    unknown = SharingSwitch(sharing, sys_root=tmp_path, metered=lambda: None)
    assert not await unknown.check() and not unknown.paused


# --- the whole shutdown, mDNS included (in a namespace with only lo) ----------------------------------


def test_sigterm_says_stopping_withdraws_the_adverts_and_exits_0(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    from tests.netns import loopback_host_context, require_namespaces
    from tests.test_discovery_advertise import LANSHARE, OSTREE, Probe

    require_namespaces()
    state = tmp_path / "state"
    config = tmp_path / "empty.toml"
    config.touch()
    env = _environment(
        tmp_path,
        NOTIFY_SOCKET=notify_socket.path,
        LANSHARE_SHARING_LISTEN="0.0.0.0:0",
        LANSHARE_SHARING_INTERFACES="lo",
        LANSHARE_SHARING_ADVERTISE="true",
        LANSHARE_SHARING_DISCOVERY="true",
        LANSHARE_REPO_COLLECTION_ID="org.example.Os",
    )
    with loopback_host_context() as lan, open(tmp_path / "serve.log", "wb") as log:
        probe = Probe(lan, "solo", "127.0.0.1")
        try:
            proc = lan.python(
                "solo", "-m", "lanshare.cli", "serve", "--config", str(config),
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            notify_socket.expect("READY=1")
            for type_ in (LANSHARE, OSTREE):
                probe.wait_for("added", type_)
            assert (state / daemon.LAN_ADDRESS_FILE).exists() and (state / "status-address").exists()
            proc.send_signal(signal.SIGTERM)
            notify_socket.expect("STOPPING=1")
            for type_ in (LANSHARE, OSTREE):
                probe.wait_for("removed", type_)  # goodbyes, not a 1125 s wait
            assert proc.wait(30) == 0
        finally:
            probe.close()
    assert not (state / daemon.LAN_ADDRESS_FILE).exists() and not (state / "status-address").exists()
    text = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in text and "ERROR" not in text, text
