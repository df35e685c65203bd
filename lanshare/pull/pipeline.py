"""Verify and store fetched objects off the event loop, on every core, without GIL ping-pong.

Why processes: a pull of many small objects spends its time in per-object work (inflate,
SHA-256, create/write/rename a file) that is mostly Python and short syscalls.  Run in worker
threads, every syscall releases the GIL and the event loop grabs it back, so threads hand the GIL
to each other dozens of times per object (``strace -f -c``: ~27 futex calls per object, more
system CPU than wall time) and one core does all the work.  Here each *group* of objects (many
records, hundreds of KB) goes to a worker process that verifies and writes it alone, so the GIL is
contended once per group, not per syscall, and the event loop (network, zstd, batch parsing) and
the workers run on different cores.

Safety is the same as storing in-process: a worker writes through :class:`Repo` (verify, then
temp file + rename), stops at the first object that fails and reports it by position, so the
caller attributes it to the source that sent it.  Groups come from the sources' own bounded
buffers and each caller awaits its group, so memory stays bounded by groups in flight.

Small groups and streamed payloads (large objects spooled to disk) are stored in a worker
thread instead: for them a process hop costs more than it saves, and zlib and hashlib release
the GIL on large buffers anyway.  If worker processes cannot be started or one dies, storing
falls back to threads; the pull goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from lanshare.errors import CorruptObject, Error
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.pull.errors import LocalWriteError
from lanshare.wire import ObjectName

log = logging.getLogger(__name__)

Payload = bytes | BinaryIO
Outcome = tuple[list[int], CorruptObject | LocalWriteError | None]
# A group goes to a worker process from this many in-memory objects on; fewer go to a thread.
PROCESS_MIN_OBJECTS = 8
# Test and bench knob: the number of worker processes (0: store in threads only, as before).
WORKERS_ENV = "_LANSHARE_STORE_WORKERS"

# In a worker process: the repositories opened so far, by path (one per pull, in practice).
_worker_repos: dict[str, Repo] = {}


def store_one(repo: Repo, name: ObjectName, payload: Payload) -> int:
    """Verify and store one object (blocking); its size.  CorruptObject when it is wrong,
    LocalWriteError when this machine cannot write it."""
    try:
        if name.kind is ObjectType.FILE:
            if isinstance(payload, bytes):
                repo.write_filez_bytes(name.checksum, payload)
                return len(payload)
            repo.write_filez(name.checksum, payload)
            return payload.tell()
        data = payload if isinstance(payload, bytes) else payload.read()
        repo.write_metadata(name.kind, data, name.checksum)
        return len(data)
    except OSError as e:
        # Raised as a non-OSError so the HTTP layer does not take it for a network failure.
        raise LocalWriteError(f"{name}: {e.strerror or e}") from None


def store_group(repo: Repo, items: Sequence[tuple[ObjectName, Payload]]) -> Outcome:
    """Store ``items`` in order until one fails (blocking): the sizes stored, and the failure."""
    sizes: list[int] = []
    for name, payload in items:
        try:
            sizes.append(store_one(repo, name, payload))
        except (CorruptObject, LocalWriteError) as e:
            return sizes, e
    return sizes, None


def _store_in_worker(
    repo_path: str, items: list[tuple[ObjectName, bytes]]
) -> tuple[list[int], tuple[str, str, str] | None]:
    """:func:`store_group` in a worker process; the failure as plain strings (kind, name, reason),
    since exceptions with custom constructors do not survive pickling."""
    repo = _worker_repos.get(repo_path)
    if repo is None:
        try:
            repo = _worker_repos[repo_path] = Repo.open(Path(repo_path))
        except (OSError, Error) as e:
            return [], ("write", "", f"{repo_path}: {e}")
    sizes, error = store_group(repo, items)
    if isinstance(error, CorruptObject):
        return sizes, ("corrupt", error.name, error.reason)
    if error is not None:
        return sizes, ("write", "", str(error))
    return sizes, None


def _warm_up(_: int) -> int:
    return os.getpid()


_PR_SET_PDEATHSIG = 1


def _worker_init() -> None:
    """In each forked worker: leave signals to the parent, and die with it."""
    # The parent's asyncio loop and its wakeup fd came along with the fork: a signal to the
    # process group must not poke the parent's loop from here, nor run its handlers.
    with suppress(ValueError):
        signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool when interrupted
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A parent killed outright (SIGKILL, OOM) cannot shut the pool down: without this, workers
    # would wait on their queue forever, holding copies of the parent's sockets.
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent already died before prctl took effect
        os._exit(0)


def _worker_count() -> int:
    configured = os.environ.get(WORKERS_ENV)
    if configured is not None:
        with suppress(ValueError):
            return max(0, int(configured))
    # One per core: the event loop shares the cores with them, and waits on the network often.
    return min(4, max(1, os.cpu_count() or 1))


class StorePipeline:
    """Where a pull's fetched objects are verified and stored: worker processes, else threads."""

    def __init__(self, repo: Repo, workers: int | None = None) -> None:
        self.repo = repo
        self.workers = _worker_count() if workers is None else workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._started = False
        self.groups_in_processes = 0
        self.groups_in_threads = 0

    def start(self) -> None:
        """Fork the worker processes now (a few ms); :meth:`store` does it on the first group that
        needs them, so a pull with nothing to fetch (a daemon polling its origin) forks nothing."""
        if not self.workers or self._started:
            return
        self._started = True
        # fork, not forkserver: a worker costs ~1 ms instead of a fresh interpreter importing
        # lanshare, and its CPU time is this process's children's (what `time lanshare pull`
        # reports).  A worker only runs _store_in_worker: it never takes a lock that another of
        # this process's threads could have held at the fork (no logging, database or network).
        try:
            pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_init
            )
            for n in range(self.workers):
                pool.submit(_warm_up, n)  # the first submit starts every worker
        except Exception as e:  # whatever stops processes, threads still work
            log.warning("storing in threads: cannot start worker processes: %s", e)
            return
        self._pool = pool

    async def store(self, items: Sequence[tuple[ObjectName, Payload]]) -> Outcome:
        """Verify and store ``items`` in order until one fails: the sizes stored, and the failure."""
        if len(items) >= PROCESS_MIN_OBJECTS:
            self.start()
        pool = self._pool
        in_memory = [(n, p) for n, p in items if isinstance(p, bytes)]
        if pool is None or len(items) < PROCESS_MIN_OBJECTS or len(in_memory) != len(items):
            self.groups_in_threads += 1
            return await asyncio.to_thread(store_group, self.repo, items)
        loop = asyncio.get_running_loop()
        try:
            sizes, error = await loop.run_in_executor(
                pool, _store_in_worker, os.fspath(self.repo.path), in_memory
            )
        except BrokenProcessPool as e:
            # A worker died (killed, out of memory): what it stored is verified and stays;
            # storing again is harmless, so this group and the rest go through threads.
            log.warning("storing in threads: a worker process died: %s", e)
            self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            return await asyncio.to_thread(store_group, self.repo, items)
        self.groups_in_processes += 1
        if error is None:
            return sizes, None
        kind, name, reason = error
        return sizes, CorruptObject(name, reason) if kind == "corrupt" else LocalWriteError(reason)

    async def close(self) -> None:
        """Stop the worker processes (each finishes the group it is storing first)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
