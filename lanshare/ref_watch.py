"""Refs changed on disk by another process (``lanshare commit``, ``ostree commit``, ``ostree refs``).

The daemon regenerates the summary after its own pulls; a commit written into the repository it
serves by another process would leave the summary (what stock ``ostree pull`` and libostree's LAN
finder read, and the ``_ostree_repo._tcp`` advert's ``st``/``rb``) stale until the next pull.  So
the refs are polled (a stat of each ref file: no inotify, which a read-only or network filesystem
may not give) and, when they changed, the summary goes through the same update as after a pull:
:func:`lanshare.ostree.repo_summary.refresh_summary`, which never writes over a publisher's
signed summary it cannot reproduce.  The adverts follow by themselves: they re-announce within a
second of the holdings or the summary changing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from lanshare.errors import Error
from lanshare.ostree.repo import Repo
from lanshare.ostree.repo_summary import refresh_summary
from lanshare.server.holdings import Fingerprint, refs_fingerprint

log = logging.getLogger(__name__)

# Seconds between two looks at the refs: a stat per ref file, so cheap even every second.
POLL_INTERVAL = 2.0


class RefWatch:
    """Refreshes the summary when the refs on disk change."""

    def __init__(
        self,
        repo: Repo,
        lock: asyncio.Lock | None = None,
        interval: float = POLL_INTERVAL,
        seen: Fingerprint | None = None,
    ) -> None:
        self.repo = repo
        # Held while refreshing, so this never races the daemon's own summary update after a pull.
        self.lock = lock or asyncio.Lock()
        self.interval = interval
        # The refs as last seen (None: refresh at the first look).
        self._seen = seen
        self._problem: str | None = None

    async def check(self) -> bool:
        """Refresh the summary if the refs changed since the last look; True if it was rewritten."""
        fingerprint = await asyncio.to_thread(refs_fingerprint, self.repo)
        if fingerprint == self._seen:
            return False
        async with self.lock:
            try:
                changed = await asyncio.to_thread(refresh_summary, self.repo)
            except (Error, OSError) as e:
                if str(e) != self._problem:
                    log.error("cannot regenerate the summary after the refs changed: %s", e)
                self._problem = str(e)
                return False
        self._seen, self._problem = fingerprint, None
        if changed:
            log.info("summary regenerated: refs changed on disk")
        return changed

    async def run(self) -> None:
        """Check every ``interval`` seconds until cancelled."""
        while True:
            await self.check()
            await asyncio.sleep(self.interval)


async def ref_watch_ctx(app: web.Application) -> AsyncIterator[None]:
    """The daemon's cleanup_ctx entry: a :class:`RefWatch` on its repository."""
    from lanshare import appkeys

    repo, background = app[appkeys.REPO], app.get(appkeys.BACKGROUND)
    # The first look only records the refs: the summary was refreshed when the repo was opened.
    seen = await asyncio.to_thread(refs_fingerprint, repo)
    watch = RefWatch(repo, background.lock if background is not None else None, seen=seen)
    task = asyncio.create_task(watch.run(), name="ref watch")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
