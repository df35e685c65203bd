"""The daemon's control socket: where ``lanshare pull`` hands its work to the running daemon.

Why: on a machine whose ``lanshare serve`` runs, the daemon already holds the repository, the
index, the peer table and a warm interpreter.  A pull it runs costs no start-up (a Python process
spends ~0.5 s importing aiohttp and SQLAlchemy before it fetches anything), is seen by the LAN
as this node's fetch (one download per LAN), and never races the daemon's own rounds on the
same refs, because both take the daemon's pull lock.

The socket is a Unix socket ``control.sock`` in the state directory, mode 0600: only the user the
daemon runs as (and root) can connect, the same people who can write its repository.  It is not
on the LAN and not on the status listener, which stay read-only.

The daemon pulls with its own configuration, so it takes a pull only when the command's
configuration says the same about pulling (:func:`pull_settings`): an admin who edited the file
and did not restart the daemon, or who overrides a setting in the environment, gets a pull by
the command, with what it read, as before.

Protocol: JSON lines, one object per line, both ways.  The command sends one
:class:`PullRequest`; the daemon answers ``{"refused": "…"}`` when it serves another repository
or pulls with other settings (the command then pulls itself), else ``{"progress": {…}}`` lines
(when asked for) and ``{"note": "…"}`` lines, then exactly one of ``{"result": {…}}`` (the
``lanshare pull --json`` document) or ``{"error": "…", "kind": "usage"|"failure"}``.  The command
closing its end (Ctrl-C) cancels the pull.  No HTTP: nothing but these two programs speaks on
the socket, and the command then imports neither an HTTP client nor an email parser.

This module is imported by the CLI before it knows whether a daemon runs: stdlib only.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lanshare.config import Config

SOCKET_NAME = "control.sock"
# A request is a few hundred bytes of JSON; a longer line is refused.
MAX_REQUEST_BYTES = 64 * 1024
# sockaddr_un.sun_path holds 108 bytes with the terminating NUL.
MAX_SOCKET_PATH = 107


def pull_settings(config: Config) -> str:
    """A digest of what in ``config`` decides how a pull goes: where it stores and indexes, what it
    trusts, where it fetches from, how.  Two processes with the same digest pull the same way."""
    sections = (config.repo, config.database, config.trust, config.origin, config.pull, config.sharing)
    # The sections are frozen dataclasses of plain values: their repr is their content.
    return hashlib.sha256(repr(sections).encode()).hexdigest()


def socket_path(state_dir: Path) -> Path:
    """Where the daemon using ``state_dir`` listens for control requests."""
    return state_dir / SOCKET_NAME


@contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """A name for the socket at ``path`` that fits in a ``sockaddr_un``, for bind() or connect().

    ``path`` itself when short enough; else the same file through an open descriptor of its
    directory (``/proc/self/fd/N/control.sock``), which Linux resolves like any path, so a deep
    state directory still gets its socket.
    """
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        yield os.fspath(path)
        return
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{directory}/{path.name}"
    finally:
        os.close(directory)


@dataclass(frozen=True)
class PullRequest:
    """What ``lanshare pull`` asks the daemon to pull, into which repository."""

    target: str
    repo: str  # the repository the command would pull into: the daemon refuses if not its own
    settings: str  # the command's pull_settings(): the daemon refuses if not its own
    ref: str | None = None
    sources: tuple[str, ...] = field(default=())
    progress: bool = False  # whether to send progress lines (a person watches a terminal)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "repo": self.repo,
            "settings": self.settings,
            "ref": self.ref,
            "sources": list(self.sources),
            "progress": self.progress,
        }

    @classmethod
    def from_json(cls, data: object) -> PullRequest:
        """The request a client sent; ValueError says what is wrong with a malformed one."""
        if not isinstance(data, dict):
            raise ValueError("the request must be a JSON object")
        target, repo, ref = data.get("target"), data.get("repo"), data.get("ref")
        settings = data.get("settings")
        sources, progress = data.get("sources", []), data.get("progress", False)
        if not isinstance(target, str) or not target:
            raise ValueError("target: a ref or commit checksum is required")
        if not isinstance(repo, str) or not repo:
            raise ValueError("repo: the repository path is required")
        if not isinstance(settings, str):
            raise ValueError("settings: the digest of the pull settings is required")
        if ref is not None and not isinstance(ref, str):
            raise ValueError("ref: must be a string")
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise ValueError("sources: must be a list of URLs")
        if not isinstance(progress, bool):
            raise ValueError("progress: must be true or false")
        return cls(target, repo, settings, ref, tuple(sources), progress)
