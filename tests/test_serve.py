"""``lanshare serve`` as a real process, pulled from by stock ``ostree pull``; the daemon in-process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lanshare import daemon
from lanshare.config import load_config
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from tests.conftest import build_tree, ostree, ostree_commit
from tests.gpg_fixtures import GpgKeys
from tests.test_ostree_oracle import assert_same_tree, lanshare_commit

SOURCE_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Published:
    """A signed publisher repository: a checkpoint chain by lanshare, one commit by ostree."""

    repo: Path
    trees: dict[str, Path]
    commits: dict[str, str]
    keyring: Path
    other_keyring: Path
    big: str  # an incompressible ~300 KB .filez


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, gpg_keys: GpgKeys) -> Published:
    base = tmp_path_factory.mktemp("publish")
    repo = base / "repo"
    sign = ["--gpg-sign", gpg_keys.trusted.key_id, "--gpg-homedir", str(gpg_keys.homedir)]
    trees = {f"v{n}": build_tree(base / f"tree{n}", n) for n in range(1, 6)}
    (trees["v5"] / "random.bin").write_bytes(os.urandom(300_000))
    commits = {
        "v1": lanshare_commit(repo, "os/stable", trees["v1"], "--collection-id", "org.example.Os", *sign)
    }
    commits["v2"] = lanshare_commit(repo, "os/stable", trees["v2"], "--checkpoint", *sign)
    commits["v3"] = lanshare_commit(repo, "os/stable", trees["v3"], *sign)
    commits["v4"] = lanshare_commit(
        repo, "os/stable", trees["v4"], "--checkpoint-target", "os/stable-v2", *sign
    )
    source = f"os/stable@{commits['v4']}"
    commits["v5"] = lanshare_commit(
        repo, "os/stable-v2", trees["v5"], "--parent", "none", "--checkpoint-source", source, *sign
    )
    trees["ostree"] = build_tree(base / "tree-ostree", 9)
    commits["ostree"] = ostree_commit(
        repo, "os/ostree-made", trees["ostree"], f"--gpg-sign={gpg_keys.trusted.key_id}",
        f"--gpg-homedir={gpg_keys.homedir}",
    )  # fmt: skip
    # A scratch delta and a from-to delta, listed by ostree's own summary (which the daemon keeps,
    # its refs being current).
    ostree("static-delta", "generate", f"--repo={repo}", "--empty", "os/stable-v2")
    ostree("static-delta", "generate", f"--repo={repo}", "os/stable")
    ostree("summary", "-u", f"--repo={repo}")
    served = Repo.open(repo)
    big = max((p.stat().st_size, c) for c, k, p in served.iter_objects() if k is ObjectType.FILE)[1]
    return Published(repo, trees, commits, gpg_keys.trusted.keyring, gpg_keys.other.keyring, big)


@dataclass
class Daemon:
    """A running ``lanshare serve`` process."""

    proc: subprocess.Popen[bytes]
    url: str
    state: Path
    log: Path


def _start(base: Path, repo: Path, extra: str = "") -> Daemon:
    state = base / "state"
    config = base / "lanshare.toml"
    config.write_text(
        f'[repo]\npath = "{repo}"\n'
        f'[sharing]\nlisten = "127.0.0.1:0"\nadvertise = false\ndiscovery = false\n{extra}'
    )
    log = base / "serve.log"
    env = {**os.environ, "LANSHARE_STATE_DIR": str(state)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lanshare.cli", "serve", "--config", str(config)],
            cwd=SOURCE_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    address = state / daemon.LAN_ADDRESS_FILE
    deadline = time.monotonic() + 30
    while not address.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"lanshare serve did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return Daemon(proc, f"http://{address.read_text().strip()}/", state, log)


def _stop(server: Daemon, timeout: float = 10) -> int:
    server.proc.send_signal(signal.SIGTERM)
    try:
        return server.proc.wait(timeout)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, published: Published) -> Iterator[Daemon]:
    server = _start(tmp_path_factory.mktemp("daemon"), published.repo)
    yield server
    assert _stop(server) == 0, server.log.read_text()


def _client(tmp_path: Path, url: str, keyring: Path, name: str = "client", mode: str = "archive") -> Path:
    repo = tmp_path / name
    ostree("init", f"--repo={repo}", f"--mode={mode}")
    ostree("remote", "add", f"--repo={repo}", f"--gpg-import={keyring}", "origin", url)
    return repo


def _check_out(repo: Path, rev: str, dest: Path) -> Path:
    ostree("checkout", f"--repo={repo}", rev, str(dest))
    return dest


def test_stock_ostree_pull_with_gpg_verification(
    tmp_path: Path, published: Published, served: Daemon
) -> None:
    client = _client(tmp_path, served.url, published.keyring)
    ostree("pull", f"--repo={client}", "origin", "os/stable", "os/ostree-made")
    ostree("fsck", f"--repo={client}")
    assert (
        ostree("rev-parse", f"--repo={client}", "origin:os/stable").stdout.strip() == published.commits["v4"]
    )
    assert_same_tree(published.trees["v4"], _check_out(client, "origin:os/stable", tmp_path / "co-stable"))
    made = _check_out(client, "origin:os/ostree-made", tmp_path / "co-ostree")
    assert_same_tree(published.trees["ostree"], made)
    # Verification really is on: the same pull against a keyring without the publisher's key fails.
    untrusted = _client(tmp_path, served.url, published.other_keyring, "untrusted")
    result = ostree("pull", f"--repo={untrusted}", "origin", "os/stable", check=False)
    assert result.returncode != 0 and "public key not found" in result.stderr, result.stderr


def test_stock_ostree_pull_through_static_deltas(
    tmp_path: Path, published: Published, served: Daemon
) -> None:
    # libostree applies deltas only into a non-archive repository; --require-static-deltas proves
    # the delta files (superblock, parts, delta index) were fetched from us and used.
    client = _client(tmp_path, served.url, published.keyring, mode="bare-user")
    ostree("pull", f"--repo={client}", "--require-static-deltas", "origin", "os/stable-v2")  # scratch
    ostree("pull", f"--repo={client}", "origin", f"os/stable@{published.commits['v3']}")
    ostree("pull", f"--repo={client}", "--require-static-deltas", "origin", "os/stable")  # v3 -> v4
    ostree("fsck", f"--repo={client}")
    assert_same_tree(published.trees["v5"], _check_out(client, "origin:os/stable-v2", tmp_path / "v5"))
    assert_same_tree(published.trees["v4"], _check_out(client, "origin:os/stable", tmp_path / "v4"))


def test_stock_ostree_pull_with_static_deltas_disabled(
    tmp_path: Path, published: Published, served: Daemon
) -> None:
    client = _client(tmp_path, served.url, published.keyring)
    ostree("pull", f"--repo={client}", "origin", f"os/stable@{published.commits['v3']}")
    ostree("pull", f"--repo={client}", "--disable-static-deltas", "origin", "os/stable", "os/stable-v2")
    ostree("fsck", f"--repo={client}")
    assert_same_tree(published.trees["v5"], _check_out(client, "origin:os/stable-v2", tmp_path / "v5"))
    assert_same_tree(published.trees["v4"], _check_out(client, "origin:os/stable", tmp_path / "v4"))


def test_stock_ostree_pull_depth_minus_one_through_the_checkpoint_chain(
    tmp_path: Path, published: Published, served: Daemon
) -> None:
    client = _client(tmp_path, served.url, published.keyring)
    ostree("pull", f"--repo={client}", "--depth=-1", "origin", "os/stable", "os/stable-v2")
    ostree("fsck", f"--repo={client}")
    log = ostree("log", f"--repo={client}", "origin:os/stable").stdout
    for version in ("v1", "v2", "v3", "v4"):
        commit = published.commits[version]
        assert commit in log
        assert_same_tree(published.trees[version], _check_out(client, commit, tmp_path / version))
    assert_same_tree(published.trees["v5"], _check_out(client, "origin:os/stable-v2", tmp_path / "v5"))


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_info_and_node_id_from_the_real_process(published: Published, served: Daemon) -> None:
    info = _get_json(served.url + "lanshare/v1/info")
    assert info["node_id"] == (served.state / daemon.NODE_ID_FILE).read_text().strip()
    assert info["refs"]["os/stable-v2"] == published.commits["v5"]
    assert info["checkpoints"] == [published.commits["v2"], published.commits["v4"]]


def test_sigterm_lets_an_in_flight_transfer_finish_then_exits_0(tmp_path: Path, published: Published) -> None:
    # 400 KB/s makes the ~300 KB object take most of a second: long enough to stop mid-way.
    server = _start(tmp_path, published.repo, "max_upload_rate = 400000\n")
    path = Repo.open(published.repo).object_path(published.big, ObjectType.FILE)
    url = server.url + path.relative_to(published.repo).as_posix()
    received: list[bytes] = []
    sending = threading.Event()

    def fetch() -> None:
        with urllib.request.urlopen(url, timeout=10) as response:
            first = response.read(1000)
            sending.set()
            received.append(first + response.read())

    fetcher = threading.Thread(target=fetch)
    fetcher.start()
    assert sending.wait(10)
    assert _stop(server) == 0, server.log.read_text()
    # It let the transfer in flight finish: the client has every byte.
    fetcher.join(30)
    assert received == [path.read_bytes()]
    assert not (server.state / daemon.LAN_ADDRESS_FILE).exists()


def test_a_second_daemon_on_a_taken_port_fails_with_one_line(
    tmp_path: Path, published: Published, served: Daemon
) -> None:
    port = served.url.rsplit(":", 1)[1].strip("/")
    config = tmp_path / "lanshare.toml"
    config.write_text(f'[repo]\npath = "{published.repo}"\n[sharing]\nlisten = "127.0.0.1:{port}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "lanshare.cli", "serve", "--config", str(config)],
        cwd=SOURCE_ROOT,
        env={**os.environ, "LANSHARE_STATE_DIR": str(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"lanshare: error: cannot listen on 127.0.0.1:{port}")
    )
    assert "Traceback" not in result.stderr


@pytest.mark.asyncio
async def test_daemon_on_port_0_writes_its_address_and_keeps_its_node_id(tmp_path: Path) -> None:
    config_file = tmp_path / "lanshare.toml"
    config_file.write_text('[sharing]\nlisten = "127.0.0.1:0"\nadvertise = false\ndiscovery = false\n')
    config = load_config(config_file, {"LANSHARE_STATE_DIR": str(tmp_path / "state")})
    node_ids = []
    for _ in range(2):
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(config, stop))
        address = config.state_dir / daemon.LAN_ADDRESS_FILE
        while not address.exists():
            assert not task.done(), task
            await asyncio.sleep(0.02)
        host, port = address.read_text().strip().rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        info = await asyncio.to_thread(_get_json, f"http://{host}:{port}/lanshare/v1/info")
        node_ids.append(info["node_id"])
        stop.set()
        await asyncio.wait_for(task, 10)
        assert not address.exists()
    assert node_ids[0] == node_ids[1] == (config.state_dir / daemon.NODE_ID_FILE).read_text().strip()
    assert (config.repo.path / "config").exists()  # created at start, with a summary
    assert (config.repo.path / "summary").exists()
