"""Whole ``lanshare serve`` processes inside the hosts of a namespace LAN (:mod:`tests.netns`).

Each daemon has its own directory (config, state, log); its CLI commands run inside the same host,
so ``lanshare upgrade`` there sees exactly the network the daemon sees.  The daemon itself is
:class:`lanshare.netns_daemon.NamespaceDaemon` (shared with ``lanshare.demo``); :class:`LanDaemon`
adds what tests want: chaining, waiting, and a test failure when the daemon or a command fails.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import pytest

from lanshare.commands.peers import peer_json
from lanshare.index.models import utcnow
from lanshare.netns_daemon import NamespaceDaemon, poll

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 30.0, every: float = 0.1) -> T:
    """Poll ``check`` until it returns something other than None/False; fail after ``timeout`` s."""
    value = poll(check, timeout, every)
    if value is None:
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
    return value


@dataclass
class LanDaemon(NamespaceDaemon):
    """One machine's lanshare in a test: a daemon that dies, or a command that fails, fails the test."""

    starts: int = field(default=0)

    def configure(self, text: str) -> LanDaemon:
        """Write the config file: ``[repo] path`` plus ``text``."""
        self.write_config(text)
        return self

    def start(self) -> LanDaemon:
        """Start ``lanshare serve`` in the host and wait until its LAN listener is up."""
        return self.launch().wait_listening()

    def launch(self) -> Self:
        """Start ``lanshare serve`` in the host without waiting (see :meth:`wait_listening`)."""
        self.starts += 1
        with open(self.log, "ab") as out:
            out.write(f"--- start {self.starts}\n".encode())
        return super().launch()

    def wait_listening(self) -> LanDaemon:
        """Wait until the LAN listener of the launched daemon is up."""
        assert self.proc is not None

        def up() -> bool:
            died = self.exited()
            if died is not None:
                pytest.fail(died)
            return self.listening()

        wait_for(up, f"lanshare serve on {self.host} to listen")
        return self

    def stop(self) -> None:
        """SIGTERM: a graceful stop (goodbye packets), waited for."""
        self.terminate()
        if self.proc is not None:
            self.proc.wait(30)

    def cli(
        self, *args: str | Path, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``lanshare ARGS --config …`` in the host; a failure fails the test unless ``check=False``."""
        done = super().cli(*args, timeout=timeout)
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
        now = utcnow()
        return {p.node_id: peer_json(p, now) for p in self.known_peers()}
