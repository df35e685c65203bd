"""The daemon's side of the control socket: run the pulls ``lanshare pull`` hands over.

A ``cleanup_ctx`` entry of the daemon application, started once background work is up (it takes
the same pull lock as the daemon's rounds) and stopped first.  Each connection runs one pull on
the daemon's event loop, with the daemon's repository, index, peers and pull options; a command
that goes away (Ctrl-C) cancels its pull, which leaves only verified objects, as any cut-short
pull.  The protocol is in :mod:`lanshare.control`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from lanshare import appkeys as daemon
from lanshare.control import MAX_REQUEST_BYTES, PullRequest, pull_settings, socket_address, socket_path
from lanshare.errors import Error, UsageError
from lanshare.plan import plan_from_config
from lanshare.progress import ProgressUpdate
from lanshare.pull import pull
from lanshare.pull.configured import record_pull

log = logging.getLogger(__name__)

# How often a progress line goes out while objects arrive (a bar redraws about this often).
PROGRESS_INTERVAL = 0.1
# At shutdown, how long pulls in flight get to end after being cancelled.
SHUTDOWN_TIMEOUT = 5.0

Send = Callable[[dict[str, Any]], Awaitable[None]]


async def control_socket_ctx(app: web.Application) -> AsyncIterator[None]:
    """Daemon ``cleanup_ctx`` entry: serve pull requests on ``<state_dir>/control.sock``."""
    path = socket_path(app[daemon.CONFIG].state_dir)
    sock = await asyncio.to_thread(_listen, path)
    connections: set[asyncio.Task[None]] = set()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await _serve_connection(app, reader, writer)
        finally:
            connections.discard(task)

    try:
        server = await asyncio.start_unix_server(connected, sock=sock, limit=MAX_REQUEST_BYTES)
    except BaseException:
        sock.close()
        raise
    log.info("control socket on %s (lanshare pull hands its pulls to this daemon)", path)
    try:
        yield
    finally:
        server.close()  # closes the listening socket
        for task in list(connections):
            task.cancel()
        if connections:
            await asyncio.wait(list(connections), timeout=SHUTDOWN_TIMEOUT)
        with suppress(FileNotFoundError):
            path.unlink()


def _listen(path: Path) -> socket.socket:
    """A listening socket at ``path``, mode 0600, after removing one a dead daemon left (blocking)."""
    with socket_address(path) as address:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(address)
        except (FileNotFoundError, ConnectionRefusedError):
            pass  # none, or a dead daemon's
        except OSError as e:  # not ours to replace (another user's, say): say so, start nothing
            raise daemon.DaemonError(f"cannot use the control socket {path}: {e.strerror or e}") from e
        else:
            raise daemon.DaemonError(
                f"another lanshare daemon uses the state directory {path.parent} (its control socket answers)"
            )
        finally:
            probe.close()
        try:
            path.unlink(missing_ok=True)
        except OSError as e:  # a directory of that name, say
            raise daemon.DaemonError(f"cannot replace {path}: {e.strerror or e}") from e
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address)
            # Before listen(): until then a connection is refused, so no one connects while it is open.
            os.chmod(path, 0o600)
            sock.listen(16)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise daemon.DaemonError(f"cannot open the control socket {path}: {e.strerror or e}") from e
    return sock


def _same_repo(asked: str, served: Path) -> bool:
    try:
        return os.path.samefile(asked, served)
    except OSError:
        return False


async def _serve_connection(
    app: web.Application, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One command's pull: read its request, refuse it or run it, answer, close."""

    async def send(message: dict[str, Any]) -> None:
        writer.write(json.dumps(message).encode() + b"\n")
        await writer.drain()

    try:
        try:
            asked = PullRequest.from_json(json.loads(await reader.readline()))
        except ValueError as e:  # also a line over the limit
            await send({"error": f"bad pull request: {e}", "kind": "failure"})
            return
        if refusal := await _refusal(app, asked):
            await send({"refused": refusal})
            return
        await _pull_while_connected(app, asked, reader, send)
    except (ConnectionError, BrokenPipeError):
        pass  # the command went away; its pull, if any, was cancelled
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


async def _refusal(app: web.Application, asked: PullRequest) -> str | None:
    """Why this daemon should not run ``asked`` (the command then pulls itself), or None."""
    repo = app[daemon.REPO]
    if not await asyncio.to_thread(_same_repo, asked.repo, repo.path):
        return f"this daemon serves {repo.path}, not {asked.repo}"
    if asked.settings != pull_settings(app[daemon.CONFIG]):
        return "this daemon pulls with other settings (a changed config file, or the environment)"
    return None


async def _pull_while_connected(
    app: web.Application, asked: PullRequest, reader: asyncio.StreamReader, send: Send
) -> None:
    """Run the pull until it ends or the command hangs up (then cancel it); send how it ended."""
    pulling = asyncio.create_task(_run(app, asked, send), name=f"pull of {asked.target} for lanshare pull")
    # The command sends nothing more: end of file means it went away.
    hangup = asyncio.create_task(reader.read(1))
    try:
        await asyncio.wait({pulling, hangup}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when the daemon stops
        hangup.cancel()
        if not pulling.done():
            pulling.cancel()
            await asyncio.wait({pulling})  # its clean-up (the transfer marked failed) runs first
    if pulling.cancelled():
        log.info("pull of %s cancelled: lanshare pull went away", asked.target)
        return
    try:
        document = pulling.result()
    except UsageError as e:
        await send({"error": str(e), "kind": "usage"})
    except Error as e:
        log.warning("pull of %s asked by lanshare pull failed: %s", asked.target, e)
        await send({"error": str(e), "kind": "failure"})
    else:
        await send({"result": document})


async def _run(app: web.Application, asked: PullRequest, send: Send) -> dict[str, Any]:
    """Pull as the daemon's rounds do, under their lock; the ``lanshare pull --json`` document."""
    config, repo, index = app[daemon.CONFIG], app[daemon.REPO], app[daemon.INDEX]
    background = app[daemon.BACKGROUND]
    plan = plan_from_config(config, asked.sources) if asked.sources else background.plan()
    latest = _Latest()
    sender = asyncio.create_task(_send_progress(latest, send)) if asked.progress else None
    try:
        if background.lock.locked():
            await send({"note": "waiting for the daemon's own pull to finish"})
        async with background.lock:
            log.info("pulling %s, handed over by a command (lanshare pull or upgrade)", asked.target)
            result = await pull(
                repo,
                asked.target,
                plan,
                ref=asked.ref,
                options=background.options,
                index=index,
                progress=latest if sender is not None else None,
            )
            try:
                regenerate = config.repo.regenerate_summary
                await asyncio.to_thread(record_pull, repo, index, result, regenerate_summary=regenerate)
            except (Error, SQLAlchemyError) as e:
                # The commit is in the repository and verified; the ref watch and the next round
                # catch the summary and the index up.
                log.error("after the pull of %s: %s", asked.target, e)
                await send({"note": f"pulled, but the summary or index lags: {e}"})
    finally:
        if sender is not None:
            sender.cancel()
            with suppress(asyncio.CancelledError):
                await sender
    document = result.to_json()
    document["pulled_by"] = "daemon"
    return document


class _Latest:
    """The progress callback: keeps only the newest update (the pull calls it once per object)."""

    def __init__(self) -> None:
        self.update: ProgressUpdate | None = None

    def __call__(self, update: ProgressUpdate) -> None:
        self.update = update


async def _send_progress(latest: _Latest, send: Send) -> None:
    """Every PROGRESS_INTERVAL, the newest update if it changed (not one line per object)."""
    sent: ProgressUpdate | None = None
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL)
        if latest.update is not None and latest.update != sent:
            sent = latest.update
            await send({"progress": sent.to_json()})
