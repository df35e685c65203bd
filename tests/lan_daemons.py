"""Whole ``lanshare serve`` processes inside the hosts of a namespace LAN (:mod:`tests.netns`).

Each daemon has its own directory (config, state, log); its CLI commands run inside the same host,
so ``lanshare upgrade`` there sees exactly the network the daemon sees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.exc import OperationalError

from lanshare import daemon
from lanshare.commands.peers import peer_json
from lanshare.discovery.peers import PeerTable
from lanshare.index.db import make_engine
from lanshare.index.models import utcnow
from tests.netns import NetnsLan

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0, every: float = 0.1) -> T:
    """Poll ``check`` until it returns something other than None/False; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@dataclass
class LanDaemon:
    """One machine's lanshare: its config, state and repository, and its ``serve`` process."""

    lan: NetnsLan
    host: str
    base: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

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

    def configure(self, text: str) -> LanDaemon:
        """Write the config file: ``[repo] path`` plus ``text``."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f'[repo]\npath = "{self.repo}"\n{text}')
        return self

    def start(self) -> LanDaemon:
        """Start ``lanshare serve`` in the host and wait until its LAN listener is up."""
        return self.launch().wait_listening()

    def launch(self) -> LanDaemon:
        """Start ``lanshare serve`` in the host without waiting (see :meth:`wait_listening`)."""
        (self.state / daemon.LAN_ADDRESS_FILE).unlink(missing_ok=True)
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"--- start {self.starts}\n".encode())
            out.flush()
            self.proc = self.lan.python(
                self.host, "-m", "lanshare.cli", "serve", "--config", str(self.config),
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def wait_listening(self) -> LanDaemon:
        """Wait until the LAN listener of the launched daemon is up."""
        address = self.state / daemon.LAN_ADDRESS_FILE
        proc = self.proc
        assert proc is not None
        wait_for(
            lambda: address.exists() or (proc.poll() is not None and pytest.fail(self._died())),
            f"lanshare serve on {self.host} to listen",
        )
        return self

    def _died(self) -> str:
        return f"lanshare serve on {self.host} exited:\n{self.log.read_text()[-4000:]}"

    def stop(self) -> None:
        """SIGTERM: a graceful stop (goodbye packets), waited for."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def kill(self) -> None:
        """SIGKILL: a crash, with no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def cli(
        self, *args: str | Path, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``lanshare ARGS --config …`` inside the host."""
        argv = [sys.executable, "-m", "lanshare.cli", *map(str, args), "--config", str(self.config)]
        done = self.lan.run(self.host, argv, check=False, timeout=timeout, env=self.env)
        if check and done.returncode != 0:
            pytest.fail(f"lanshare {' '.join(map(str, args))} on {self.host} exited {done.returncode}:\n"
                        f"{done.stdout}\n{done.stderr}")  # fmt: skip
        return done

    def peers(self) -> dict[str, dict[str, Any]]:
        """``lanshare peers --json`` of this machine, by node id."""
        rows = json.loads(self.cli("peers", "--json").stdout)["peers"]
        return {row["node_id"]: row for row in rows}

    def table(self) -> dict[str, dict[str, Any]]:
        """The peer table read straight from the index, as ``peers --json`` shows it (fast, to poll)."""
        engine = make_engine(f"sqlite:///{self.state / 'index.sqlite'}")
        try:
            now = utcnow()
            return {p.node_id: peer_json(p, now) for p in PeerTable(engine).peers()}
        except OperationalError:
            return {}  # the daemon has not created the table yet
        finally:
            engine.dispose()

    @property
    def node_id(self) -> str:
        return (self.state / daemon.NODE_ID_FILE).read_text().strip()
