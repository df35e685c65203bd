"""A whole ``lanshare serve`` process inside one host of a namespace LAN (:mod:`lanshare.netns`).

Each daemon has its own directory (config, state, repository, ``serve.log``); its CLI commands run
inside the same host with the same ``LANSHARE_STATE_DIR``, so ``lanshare upgrade`` there sees
exactly the network and the state the daemon sees.  ``lanshare.demo`` (``Machine``) and the tests
(``tests/lan_daemons.py``, ``LanDaemon``) build on :class:`NamespaceDaemon`; each says in its own
way (an exception, a test failure) what :meth:`NamespaceDaemon.exited` reports.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

from sqlalchemy.exc import OperationalError

from lanshare import daemon
from lanshare.discovery.peers import PeerTable
from lanshare.index.db import make_engine
from lanshare.index.models import Peer
from lanshare.netns import NetnsLan

T = TypeVar("T")


def poll(check: Callable[[], T | None], timeout: float, every: float) -> T | None:
    """Call ``check`` every ``every`` s until it returns something other than None/False, and return that.

    None once ``timeout`` s have passed: the caller says, its own way, what did not happen.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(every)


@dataclass
class NamespaceDaemon:
    """One machine's lanshare: its directory under ``base`` and its ``serve`` process in ``host``."""

    lan: NetnsLan
    host: str
    base: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        """How messages name this machine."""
        return self.host

    @property
    def config(self) -> Path:
        return self.base / "lanshare.toml"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def repo(self) -> Path:
        return self.base / "repo"

    @property
    def log(self) -> Path:
        return self.base / "serve.log"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "LANSHARE_STATE_DIR": str(self.state)}

    @property
    def node_id(self) -> str:
        return (self.state / daemon.NODE_ID_FILE).read_text().strip()

    def write_config(self, text: str) -> None:
        """The config file: ``[repo] path`` (this machine's repository) followed by ``text``."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f'[repo]\npath = "{self.repo}"\n{text}')

    def launch(self) -> Self:
        """Start ``lanshare serve`` inside the host without waiting; its output goes to ``serve.log``."""
        # A file left by an earlier run would make listening() true before this one listens.
        (self.state / daemon.LAN_ADDRESS_FILE).unlink(missing_ok=True)
        with open(self.log, "ab") as out:
            self.proc = self.lan.python(
                self.host, "-m", "lanshare.cli", "serve", "--config", str(self.config),
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def listening(self) -> bool:
        """The LAN listener of the launched daemon is up."""
        return (self.state / daemon.LAN_ADDRESS_FILE).exists()

    def exited(self) -> str | None:
        """Why the launched daemon is no longer running (its exit status and the log's tail), or None."""
        if self.proc is None or self.proc.poll() is None:
            return None
        tail = self.log.read_text(errors="replace")[-4000:]
        return f"lanshare serve on {self.name} exited {self.proc.returncode}:\n{tail}"

    def cli(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``lanshare ARGS --config …`` run inside the host, as the daemon sees the network."""
        argv = [sys.executable, "-m", "lanshare.cli", *map(str, args), "--config", str(self.config)]
        return self.lan.run(self.host, argv, check=False, timeout=timeout, env=self.env)

    def known_peers(self) -> list[Peer]:
        """This machine's peer table, read from its index (cheap enough to poll); [] before it exists."""
        engine = make_engine(f"sqlite:///{self.state / 'index.sqlite'}")
        try:
            return PeerTable(engine).peers()
        except OperationalError:  # the daemon has not created its index yet
            return []
        finally:
            engine.dispose()

    def terminate(self) -> None:
        """SIGTERM: a graceful stop (goodbye packets); see :meth:`wait`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30) -> int | None:
        """The exit status once the daemon has stopped (None: not started, or still running)."""
        if self.proc is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        return self.proc.poll()

    def kill(self) -> None:
        """SIGKILL: a crash, with no goodbye; waited for."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
