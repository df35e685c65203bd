"""Builds status snapshots for the status listener, keeping the costly parts while nothing changed.

Three parts, three cadences:

* the index part (peers, transfers, bytes) and the deployed commit: read at most once a second;
* the chain part (refs, commit objects, the update path): recomputed when a ref, a
  ``.commitpartial`` marker, the deployed commit, or one of the commit objects the chain found
  missing changes;
* the retention part (why each commit stays, disk use): a retention plan stats every object and
  walks every kept tree — about a minute for 200,000 objects — so it runs in a child process (a
  thread would hold the GIL the LAN listener's event loop needs), when the chain changed or
  ``RETENTION_TTL`` passed, and never sooner after the previous run than ``RETENTION_DUTY`` times
  its duration, keeping it under a tenth of one core.  Snapshots show the last finished plan,
  saying when it was computed and whether a newer one is on its way; a request waits up to
  ``RETENTION_WAIT`` for a new plan (only the first request waits for a given plan), which on a
  small repository is enough.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TypeVar

from sqlalchemy import Engine

from lanshare import __version__
from lanshare.config import Config
from lanshare.errors import Error
from lanshare.index.db import make_engine
from lanshare.ostree.objects import ObjectType, is_checksum
from lanshare.ostree.repo import Repo
from lanshare.ostree.repo_summary import summary_state
from lanshare.server.limits import PeerStats
from lanshare.status.model import (
    SCHEMA_VERSION,
    Json,
    chain_part,
    index_part,
    merge,
    pins,
    read_deployed,
    retention_part,
)
from lanshare.status.recent import RecentErrors

log = logging.getLogger(__name__)

SNAPSHOT_TTL = 1.0
RETENTION_TTL = 600.0
RETENTION_DUTY = 10
RETENTION_WAIT = 5.0
T = TypeVar("T")


@dataclass
class StatusSources:
    """What the snapshot is read from: the daemon's open resources."""

    config: Config
    node_id: str
    repo: Repo
    index: Engine
    errors: RecentErrors
    lan_address: Callable[[], str | None] = lambda: None
    status_address: Callable[[], str | None] = lambda: None
    served: Callable[[], dict[str, PeerStats]] = dict
    # Of ``served``, what the daemon already added to the peers' bytes_out in the index.
    flushed: Callable[[], dict[str, int]] = dict


def _in_daemon_thread(function: Callable[[], T]) -> asyncio.Future[T]:
    """Run ``function`` in a daemon thread: unlike the default executor, shutdown does not wait for it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = function()
        except BaseException as e:
            error = e
        # RuntimeError: the loop closed while this ran, so nobody is waiting any more.
        with suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="lanshare-status-retention", daemon=True).start()
    return future


def _plan_in_child(config: Config, sender: Connection) -> None:
    """Child process entry: compute the retention part and send it back, or what went wrong."""
    engine = make_engine(config.database.url)
    try:
        sender.send(("ok", retention_part(config, Repo.open(config.repo.path), engine)))
    except Exception as e:
        sender.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        engine.dispose()
        sender.close()


class PlanProcess:
    """Retention plans computed in a child process (spawned: the daemon has threads to not fork)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._process: BaseProcess | None = None
        self._stopped = False

    def run(self) -> Json:
        """Compute one plan; blocks until the child answers (call it from a thread)."""
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=_plan_in_child, args=(self.config, sender), name="lanshare-retention-plan", daemon=True
        )
        try:
            if self._stopped:
                raise PlanError("the daemon is stopping")
            self._process = process
            process.start()
            sender.close()
            try:
                kind, value = receiver.recv()
            except EOFError:
                process.join()
                raise PlanError(
                    f"the retention plan process ended without an answer (exit {process.exitcode})"
                ) from None
            process.join()
        finally:
            sender.close()
            receiver.close()
        if kind != "ok":
            raise PlanError(value)
        result: Json = value
        return result

    def stop(self) -> None:
        """Kill a plan in progress (it only reads, so nothing is lost)."""
        self._stopped = True
        if self._process is not None and self._process.is_alive():
            self._process.terminate()


def _frontier(chain: Json) -> frozenset[str]:
    """The commits a chain walk stopped at: parents it did not hold, and what the path missed."""
    held = {c["checksum"] for c in chain["commits"]}
    parents = {c["parent"] for c in chain["commits"] if c["parent"] and c["parent"] not in held}
    # "missing" may also name a ref ("ref:os/stable"): refs are in the key already.
    return frozenset(c for c in parents | set(chain["missing"]) if is_checksum(c))


class PlanError(Error):
    """The retention plan could not be computed."""


@dataclass
class StatusCollector:
    """Snapshots of one daemon's status."""

    sources: StatusSources
    # The status page's own worker thread: in asyncio's default executor it waited behind the LAN
    # listener's file reads, and under 50 pulling peers its p99 went from tens of ms to a second.
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="lanshare-status")
    )
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _snapshot: Json | None = None
    _snapshot_at: float = 0.0
    _chain_key: object = None
    _chain: Json | None = None
    _frontier: frozenset[str] = frozenset()
    _retention: Json | None = None
    _retention_key: object = None
    _retention_at: float = 0.0
    _retention_next: float = 0.0
    _retention_error: str | None = None
    _retention_task: asyncio.Future[Json] | None = None
    _waited: asyncio.Future[Json] | None = None
    _planner: PlanProcess | None = None

    async def snapshot(self) -> Json:
        """The current status (at most SNAPSHOT_TTL old)."""
        async with self._lock:
            if self._snapshot is None or time.monotonic() - self._snapshot_at >= SNAPSHOT_TTL:
                fast = await asyncio.get_running_loop().run_in_executor(self.executor, self._read)
                await self._retention_for(fast["key"])
                self._snapshot = self._assemble(fast)
                self._snapshot_at = time.monotonic()
            return self._snapshot

    def close(self) -> None:
        """Stop waiting for a retention plan in progress (its thread is left to finish alone)."""
        if self._planner is not None:
            self._planner.stop()
        if self._retention_task is not None:
            self._retention_task.cancel()
        self.executor.shutdown(wait=False)

    def _read(self) -> Json:
        """The fast parts, and the chain part when its key changed (blocking)."""
        src = self.sources
        deployed = read_deployed(src.config)
        key = (
            frozenset(src.repo.list_collection_refs().items()),
            frozenset(src.repo.partial_commits()),
            (deployed["commit"], deployed["ref"]),
            self._frontier_held(),
        )
        if self._chain is None or key != self._chain_key:
            self._chain = chain_part(src.config, src.repo, deployed)
            self._frontier = _frontier(self._chain)
            # The chain was read now: the key must say what its frontier looked like now too.
            key = (*key[:3], self._frontier_held())
            self._chain_key = key
        return {
            "key": key[:2],
            "deployed": deployed,
            "chain": self._chain,
            "pins": pins(src.config, src.index),
            "index": index_part(src.index, src.served(), src.flushed()),
            # A publisher's signed summary served although out of date (repo_summary.refresh_summary).
            "summary_warning": summary_state(src.repo).get("warning"),
        }

    def _frontier_held(self) -> frozenset[str]:
        """Which commits the chain found missing are held now.

        A pull writes a commit's ``.commitpartial`` marker before its commit object, so refs and
        markers alone miss the object arriving: a chain read in between would stay short for good.
        """
        repo = self.sources.repo
        return frozenset(c for c in self._frontier if repo.has_object(c, ObjectType.COMMIT))

    async def _retention_for(self, key: object) -> None:
        now = time.monotonic()
        stale = (
            self._retention is None or key != self._retention_key or now - self._retention_at >= RETENTION_TTL
        )
        if stale and self._retention_task is None and now >= self._retention_next:
            self._start_retention(key)
        task = self._retention_task
        # Wait once per plan: on a big repository the next requests answer at once with what is known.
        if (
            task is not None
            and task is not self._waited
            and (self._retention is None or key != self._retention_key)
        ):
            self._waited = task
            await asyncio.wait([task], timeout=RETENTION_WAIT)

    def _start_retention(self, key: object) -> None:
        src = self.sources
        started = time.monotonic()
        if self._planner is None:
            self._planner = PlanProcess(
                dataclasses.replace(src.config, repo=dataclasses.replace(src.config.repo, path=src.repo.path))
            )
        task = _in_daemon_thread(self._planner.run)
        self._retention_task = task

        def finished(done: asyncio.Future[Json]) -> None:
            self._retention_task = None
            elapsed = time.monotonic() - started
            self._retention_next = time.monotonic() + RETENTION_DUTY * elapsed
            if done.cancelled():
                return
            error = done.exception()
            if error is not None:
                self._retention_error = f"retention plan failed: {error}"
                log.warning("status page: %s", self._retention_error)
                return
            self._retention, self._retention_key = done.result(), key
            self._retention_at, self._retention_error = time.monotonic(), None

        task.add_done_callback(finished)

    def _assemble(self, fast: Json) -> Json:
        src = self.sources
        chain = fast["chain"]
        retention = self._retention
        commits, disk = merge(chain, retention, src.config.retention.max_size)
        return {
            "schema_version": SCHEMA_VERSION,
            "generated_at": dt.datetime.now(dt.UTC).isoformat(),
            "node_id": src.node_id,
            "version": __version__,
            "listeners": {"lan": src.lan_address(), "status": src.status_address()},
            "repo": {
                "path": str(src.repo.path),
                "collection_id": src.repo.collection_id,
                "summary_warning": fast["summary_warning"],
            },
            "deployed": {
                **fast["deployed"],
                "ref": chain["path"]["ref"] if chain["path"] else fast["deployed"]["ref"],
                "path": chain["path"],
                "path_error": chain["path_error"],
                "missing": chain["missing"],
            },
            "refs": chain["refs"],
            "chain": {"commits": commits, "switches": chain["switches"]},
            "pins": fast["pins"],
            "disk": disk,
            "retention": {
                "computed_at": retention["computed_at"] if retention is not None else None,
                "seconds": retention["seconds"] if retention is not None else None,
                "current": retention is not None and self._retention_key == fast["key"],
                "pending": self._retention_task is not None,
                "error": self._retention_error,
            },
            **fast["index"],
            "errors": {
                "recent": [e.to_json() for e in src.errors.entries()],
                "totals": dict(src.errors.total),
            },
        }
