"""The command's side of the control socket: hand a pull to the running daemon (stdlib only)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lanshare.control import PullRequest, pull_settings, socket_address, socket_path
from lanshare.errors import PullError, UsageError
from lanshare.progress import ProgressUpdate

if TYPE_CHECKING:
    from lanshare.config import Config

# Connecting to a live daemon's socket is immediate; this only bounds a daemon too busy to accept.
CONNECT_TIMEOUT = 5.0


class NoDaemon(Exception):
    """No daemon takes this pull (none runs, a stale socket, another repository or settings)."""


@dataclass(frozen=True)
class DaemonPulls:
    """Pulls handed to this machine's daemon by a command (``lanshare pull``, ``lanshare upgrade``)."""

    socket: Path
    repo: str  # the repository the command works on, absolute
    settings: str  # the command's pull_settings()

    @classmethod
    def for_command(cls, config: Config, repo: Path | None) -> DaemonPulls:
        """For a command that read ``config`` and works on ``repo`` (``--repo``, else the config's)."""
        path = Path(repo or config.repo.path).absolute()
        return cls(socket_path(config.state_dir), str(path), pull_settings(config))

    def pull(
        self,
        target: str,
        ref: str | None = None,
        sources: tuple[str, ...] = (),
        progress: Callable[[ProgressUpdate], None] | None = None,
        note: Callable[[str], None] | None = None,
    ) -> dict[str, Any] | None:
        """The daemon's ``--json`` document of the pull, or None when no daemon takes it (the
        command pulls itself).  PullError and UsageError as :func:`request_pull`."""
        request = PullRequest(target, self.repo, self.settings, ref, sources, progress is not None)
        try:
            return request_pull(self.socket, request, progress, note)
        except NoDaemon:
            return None


def request_pull(
    path: Path,
    request: PullRequest,
    progress: Callable[[ProgressUpdate], None] | None = None,
    note: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Have the daemon listening on ``path`` pull ``request``; the ``lanshare pull --json`` document.

    Raises NoDaemon when no daemon takes it (the caller pulls itself), PullError when the daemon's
    pull failed, UsageError when the daemon found the request unusable (a bad ``--from`` URL).
    """
    if not path.exists():
        raise NoDaemon(f"no control socket at {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            with socket_address(path) as address:
                sock.connect(address)
        except OSError as e:
            # Refused (a dead daemon's socket), gone, permission denied (not the daemon's user):
            # pulling here says what is wrong with the repository, if anything.
            raise NoDaemon(f"cannot reach the daemon on {path}: {e.strerror or e}") from None
        # A pull may run for hours, and waits quietly for the daemon's own round to finish.
        sock.settimeout(None)
        with sock.makefile("rwb") as stream:
            stream.write(json.dumps(request.to_json()).encode() + b"\n")
            stream.flush()
            return _read_answer(stream, progress, note)
    finally:
        sock.close()


def _read_answer(
    stream: Iterable[bytes],
    progress: Callable[[ProgressUpdate], None] | None,
    note: Callable[[str], None] | None,
) -> dict[str, Any]:
    """Read progress and notes until the result, the error or the refusal."""
    try:
        for line in stream:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError(f"not a JSON object: {line[:80]!r}")
            if "result" in message:
                result = message["result"]
                if not isinstance(result, dict):
                    raise ValueError("the result is not a JSON object")
                return result
            if "refused" in message:
                raise NoDaemon(str(message["refused"]))
            if "error" in message:
                text = str(message["error"])
                raise UsageError(text) if message.get("kind") == "usage" else PullError(text)
            if "progress" in message and progress is not None:
                progress(ProgressUpdate.from_json(message["progress"]))
            elif "note" in message and note is not None:
                note(str(message["note"]))
    except OSError as e:
        raise PullError(f"lost the daemon during the pull ({e}); its log says why") from None
    except ValueError as e:
        raise PullError(f"the daemon answered something unreadable: {e}") from None
    raise PullError("the daemon stopped before the pull finished; its log says why")
