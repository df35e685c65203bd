"""The CLI's side of the control socket: hand a pull to the running daemon (stdlib only)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lanshare.control import PULL_PATH, PullRequest, socket_address
from lanshare.errors import Error, PullError, UsageError
from lanshare.progress import ProgressUpdate

# Connecting to a live daemon's socket is immediate; this only bounds a daemon too busy to accept.
CONNECT_TIMEOUT = 5.0


class NoDaemon(Exception):
    """No daemon takes this pull (none runs, a stale socket, or it serves another repository)."""


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket: http.client with a different connect()."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=CONNECT_TIMEOUT)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            with socket_address(self._path) as address:
                sock.connect(address)
        except BaseException:
            sock.close()
            raise
        # A pull may run for hours, and waits quietly for the daemon's own round to finish.
        sock.settimeout(None)
        self.sock = sock


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
    connection = _UnixConnection(path)
    try:
        try:
            connection.request(
                "POST",
                PULL_PATH,
                body=json.dumps(request.to_json()),
                headers={"Content-Type": "application/json"},
            )
            response = connection.getresponse()
        except (ConnectionRefusedError, FileNotFoundError) as e:
            raise NoDaemon(f"no daemon answers on {path}: {e.strerror}") from None
        except OSError as e:
            # Permission denied (not the daemon's user), a timeout: pulling here says what is wrong
            # with the repository, if anything.
            raise NoDaemon(f"cannot reach the daemon on {path}: {e}") from None
        if response.status == 409:
            raise NoDaemon(_error_of(response.read()))
        if response.status != 200:
            raise Error(f"the daemon refused the pull: {_error_of(response.read())}")
        return _read_answer(response, progress, note)
    finally:
        connection.close()


def _error_of(body: bytes) -> str:
    try:
        message = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace").strip() or "no reason given"
    return str(message)


def _read_answer(
    response: http.client.HTTPResponse,
    progress: Callable[[ProgressUpdate], None] | None,
    note: Callable[[str], None] | None,
) -> dict[str, Any]:
    """Read progress and notes until the result or the error."""
    try:
        for line in response:
            message = json.loads(line)
            if not isinstance(message, dict):
                raise ValueError(f"not a JSON object: {line[:80]!r}")
            if "result" in message:
                result = message["result"]
                if not isinstance(result, dict):
                    raise ValueError("the result is not a JSON object")
                return result
            if "error" in message:
                text = str(message["error"])
                raise UsageError(text) if message.get("kind") == "usage" else PullError(text)
            if "progress" in message and progress is not None:
                progress(ProgressUpdate.from_json(message["progress"]))
            elif "note" in message and note is not None:
                note(str(message["note"]))
    except (http.client.HTTPException, OSError) as e:
        raise PullError(f"lost the daemon during the pull ({e}); its log says why") from None
    except ValueError as e:
        raise PullError(f"the daemon answered something unreadable: {e}") from None
    raise PullError("the daemon stopped before the pull finished; its log says why")
