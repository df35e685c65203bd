"""Test helpers for whole daemons: a signed checkpoint chain, an origin serving it, daemons in-process."""

from __future__ import annotations

import asyncio
import functools
import http.server
import threading
import time
from collections.abc import AsyncIterator, Generator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from lanshare import daemon
from lanshare.config import Config, load_config
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from tests.conftest import build_tree
from tests.gpg_fixtures import GpgKeys
from tests.test_ostree_oracle import lanshare_commit


@dataclass(frozen=True)
class Chain:
    """A signed publisher repository: os/stable v1 → v2 (checkpoint) → v3 → v4 (→ os/stable-v2) ; v5."""

    repo: Path
    commits: dict[str, str]
    keyring: Path

    @property
    def checkpoints(self) -> list[str]:
        """The commits every machine must be able to deploy on the way."""
        return [self.commits["v2"], self.commits["v4"]]

    @property
    def heads(self) -> dict[str, str]:
        """Where each ref of the chain ends."""
        return {"os/stable": self.commits["v4"], "os/stable-v2": self.commits["v5"]}


def publish_chain(base: Path, gpg_keys: GpgKeys) -> Chain:
    """Build the chain with ``lanshare commit``, signed with the session's trusted key."""
    repo = base / "origin-repo"
    sign = ["--gpg-sign", gpg_keys.trusted.key_id, "--gpg-homedir", str(gpg_keys.homedir)]
    trees = {f"v{n}": build_tree(base / f"tree{n}", n) for n in range(1, 6)}
    # A day apart, ending an hour ago, as releases are: "newer" must not hinge on a shared second.
    now = int(time.time()) - 3600

    def at(n: int) -> list[str]:
        return ["--timestamp", str(now - (5 - n) * 86400), *sign]

    commits = {"v1": lanshare_commit(repo, "os/stable", trees["v1"], *at(1))}
    commits["v2"] = lanshare_commit(repo, "os/stable", trees["v2"], "--checkpoint", *at(2))
    commits["v3"] = lanshare_commit(repo, "os/stable", trees["v3"], *at(3))
    commits["v4"] = lanshare_commit(
        repo, "os/stable", trees["v4"], "--checkpoint-target", "os/stable-v2", *at(4)
    )
    source = f"os/stable@{commits['v4']}"
    commits["v5"] = lanshare_commit(
        repo, "os/stable-v2", trees["v5"], "--parent", "none", "--checkpoint-source", source, *at(5)
    )
    return Chain(repo, commits, gpg_keys.trusted.keyring)


@asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on 127.0.0.1 (a port of its own) until the block ends; yields its URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def static_origin(root: Path) -> AsyncIterator[str]:
    """A plain HTTP server of ``root`` (an origin like a CDN) on 127.0.0.1; yields its URL."""
    app = web.Application()
    app.router.add_static("/", root)
    async with serve_app(app) as url:
        yield url


def serve_directory(root: Path) -> Generator[str, None, None]:
    """``root`` served by Python's own HTTP server in a thread (an origin for processes); yields its URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}/"
        server.shutdown()
        thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def write_config(base: Path, keyring: Path, text: str = "") -> Path:
    """A config for one test machine: loopback, free ports, no mDNS, trusting ``keyring``."""
    base.mkdir(parents=True, exist_ok=True)
    path = base / "lanshare.toml"
    path.write_text(
        f'[trust]\ngpg_keyring = "{keyring}"\n'
        '[status]\nlisten = "127.0.0.1:0"\n'
        '[sharing]\nlisten = "127.0.0.1:0"\nadvertise = false\ndiscovery = false\n' + text
    )
    return path


def load(base: Path) -> Config:
    """The config written by :func:`write_config`, with ``base/state`` as the state directory."""
    return load_config(base / "lanshare.toml", {"LANSHARE_STATE_DIR": str(base / "state")})


@dataclass
class Running:
    """A daemon running in this event loop."""

    app: web.Application
    url: str

    @property
    def repo(self) -> Repo:
        """Its repository."""
        return self.app[daemon.REPO]


@asynccontextmanager
async def running_daemon(config: Config, app: web.Application | None = None) -> AsyncIterator[Running]:
    """Start ``create_app(config)`` (or ``app``) as ``lanshare serve`` would, stop it on exit."""
    app = app if app is not None else daemon.create_app(config)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        yield Running(app, f"http://{app[daemon.LAN_ADDRESS]}/")
    finally:
        await runner.cleanup()


def holds_chain(repo: Repo, chain: Chain) -> bool:
    """Both heads in place and every checkpoint complete; the rest of history at least as commit objects."""
    refs = repo.list_refs()
    if any(refs.get(ref) != head for ref, head in chain.heads.items()):
        return False
    complete = [*chain.checkpoints, *chain.heads.values()]
    if any(repo.is_partial(c) or repo.missing_objects(c) for c in complete):
        return False
    return all(repo.has_object(c, ObjectType.COMMIT) for c in chain.commits.values())


async def wait_until_holds_chain(repo: Repo, chain: Chain, deadline: float) -> None:
    """Poll until ``repo`` holds the chain; fail with what is missing once ``deadline`` (loop time) passes."""
    loop = asyncio.get_running_loop()
    while not await asyncio.to_thread(holds_chain, repo, chain):
        if loop.time() > deadline:
            refs = await asyncio.to_thread(repo.list_refs)
            raise AssertionError(f"{repo.path} does not hold the chain by the deadline; refs {refs}")
        await asyncio.sleep(0.2)
