"""After a pull: keep the source's summary set (:mod:`lanshare.ostree.upstream_summary`).

The set is taken from the first usable source whose summary lists the pulled ref at the commit
just verified and stored, so a set is never kept from a source that disagrees with what was
pulled.  With ``[trust]`` keys configured, a signed set is kept only if its signatures verify
(fetched again once: the publisher may have been rewriting it).  A failure here never fails the
pull: the repository then serves its own summary.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import aiohttp

from lanshare.errors import Error
from lanshare.ostree import upstream_summary
from lanshare.ostree.repo import Repo
from lanshare.ostree.repo_summary import refresh_summary
from lanshare.ostree.upstream_summary import SummarySet, UpstreamError
from lanshare.pull.errors import SourceFailure
from lanshare.pull.sources import Source
from lanshare.pull.verify import TrustPolicy

log = logging.getLogger(__name__)


async def _fetch_checked(source: Source, known: SummarySet | None, trust: TrustPolicy) -> SummarySet | None:
    """The source's set; with keys configured, signatures verified (one retry if they do not)."""
    found = await upstream_summary.fetch_set(source.fetch_file, source.url, known)
    if found is None or found is known or not found.signed:
        return found
    if trust.gpg_keyring is None and not trust.ed25519_keys:
        return found  # nothing to verify with: verifying clients will
    for attempt in range(2):
        try:
            await asyncio.to_thread(
                upstream_summary.check_signatures, found, trust.gpg_keyring, trust.ed25519_keys
            )
            return found
        except UpstreamError:
            if attempt == 1:
                raise
        found = await upstream_summary.fetch_set(source.fetch_file, source.url)
        if found is None:
            return None
    return found


async def keep_upstream_summary(
    repo: Repo, sources: Sequence[Source], ref: str | None, commit: str, trust: TrustPolicy
) -> bool:
    """Fetch and keep a source's summary set; True if a new set was kept (and the summary refreshed)."""
    if ref is None:
        return False
    stored = await asyncio.to_thread(upstream_summary.load_sets, repo)
    known = {s.source: s for s in stored}
    by_key = {s.key: s for s in stored}
    for source in sources:
        if not source.usable:
            continue
        try:
            found = await _fetch_checked(source, known.get(source.url), trust)
        except (SourceFailure, Error, aiohttp.ClientError, TimeoutError) as e:
            log.info("%s: its summary is not kept: %s", source.name, e)
            continue
        if found is None or not any(
            r.name == ref and r.checksum == commit for _, r in upstream_summary.listed_refs(found)
        ):
            continue
        kept = by_key.get(found.key)
        if kept is not None and kept.signed and not found.signed:
            continue  # a peer's own (unsigned) summary never replaces a publisher's signed set
        try:
            if not await asyncio.to_thread(upstream_summary.save, repo, found):
                return False
            await asyncio.to_thread(refresh_summary, repo)
        except (Error, OSError) as e:
            log.warning("cannot keep the summary of %s: %s", source.name, e)
            return False
        return True
    return False
