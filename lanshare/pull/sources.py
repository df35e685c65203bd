"""Where a pull gets objects: plain OSTree archive remotes and lanshare peers.

An *archive* source is any HTTP server with the archive layout (nginx, a CDN, ``python -m
http.server``, a lanshare LAN listener): refs come from ``summary`` or ``refs/heads/<ref>``,
objects from ``objects/XX/YYYY….ext``, one request each.  A *peer* is a lanshare daemon: it says
what it holds at ``/lanshare/v1/info`` and sends many objects per ``POST /lanshare/v1/objects``
(:mod:`lanshare.wire`); objects it marks TOO_LARGE come from its archive layout.

Sources never write to the repository: they hand every object to a *sink* that verifies it
before it becomes visible.  A source that fails in a way that says it cannot be trusted or is
not working (bad data, a protocol error, a transport error, a timeout) is *abandoned* for the rest
of the pull; "not found" only moves that one object on to the next source.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol
from urllib.parse import urljoin, urlsplit

import aiohttp

from lanshare import wire
from lanshare.errors import CorruptObject
from lanshare.ostree.objects import ObjectType, dirtree_checksums, is_checksum, sha256_hex
from lanshare.ostree.summary import parse_summary
from lanshare.pull.errors import SourceFailure
from lanshare.pull.http import (
    MAX_SMALL_DOCUMENT,
    ObjectBuffer,
    Timeouts,
    check_status,
    fetch_small,
    read_body,
    request,
)
from lanshare.wire import ObjectName

SourceKind = Literal["peer", "archive"]
# Verifies and stores objects from a source in order; returns how many it stored and, if it
# stopped early, the CorruptObject that the next one failed with.
Sink = Callable[
    ["Source", Sequence[tuple[ObjectName, "bytes | BinaryIO"]]], Awaitable[tuple[int, CorruptObject | None]]
]
# Called once when a source is abandoned, with the reason and whether it served bad data.
AbandonHook = Callable[["Source", str, bool], None]

# Batch sizes for peers: enough objects to amortise a round trip, few enough to spread the work.
_MIN_BATCH, _MAX_BATCH = 16, wire.MAX_BATCH_OBJECTS
_INFO_LIMIT = 4 * 1024 * 1024
# Records of a batch response are handed to the sink in groups of about this much (or this many
# objects): big enough that storing costs one hop per group, not per object; small enough to
# bound memory (per batch request in flight) and to keep the stream flowing.
_GROUP_BYTES, _GROUP_OBJECTS = 512 * 1024, 256
# A trees response is one stream (batches come several at once): its groups are stored this many
# at a time while it goes on arriving, and are smaller, so that every worker process takes a share
# of parsing and writing the dirtrees (~100 us each) while the rest of the pull waits for them.
_TREE_GROUPS_IN_FLIGHT = 4
_TREE_GROUP_OBJECTS = 64


@dataclass(frozen=True)
class SourceSpec:
    """A source before it is contacted: its URL, its kind if known, and its name in reports."""

    url: str
    kind: SourceKind | None = None  # None: ask /lanshare/v1/info, an archive if nobody answers
    name: str | None = None

    @property
    def label(self) -> str:
        """The name used in messages and in the ``--json`` summary."""
        return self.name or self.url


class PeerProvider(Protocol):
    """Feeds peers into a pull: static URLs today, the mDNS-fed peer table later."""

    def peer_specs(self) -> Sequence[SourceSpec]:
        """The peers to try, best first."""
        ...


@dataclass(frozen=True)
class StaticPeers:
    """Peers listed in ``[sharing] peers``."""

    urls: tuple[str, ...]

    def peer_specs(self) -> Sequence[SourceSpec]:
        """Each configured URL, as a peer."""
        return [SourceSpec(url, "peer") for url in self.urls]


PlanEntry = SourceSpec | PeerProvider


def expand_plan(plan: Iterable[PlanEntry]) -> list[SourceSpec]:
    """The plan's sources in order, providers expanded, each URL once."""
    seen: set[str] = set()
    specs: list[SourceSpec] = []
    for entry in plan:
        for spec in entry.peer_specs() if not isinstance(entry, SourceSpec) else [entry]:
            url = base_url(spec.url)
            if url not in seen:
                seen.add(url)
                specs.append(SourceSpec(url, spec.kind, spec.name))
    return specs


def why_no_sources(plan: Iterable[PlanEntry]) -> str:
    """Why a plan offers no source: what its peer providers say (``why_empty``), else that none is set."""
    reasons = [why() for entry in plan if (why := getattr(entry, "why_empty", None)) is not None]
    configured = "set origin.url or sharing.peers in the configuration, or pass --from URL"
    return "; ".join([*reasons, configured]) if reasons else f"no source is configured ({configured})"


def base_url(url: str) -> str:
    """``url`` checked to be http(s) or file and ending with a slash, so object paths join under it."""
    parts = urlsplit(url)
    local = parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path.startswith("/")
    if not local and (parts.scheme not in ("http", "https") or not parts.netloc):
        raise ValueError(f"{url!r} is not an http://, https:// or file:/// URL")
    return url if url.endswith("/") else url + "/"


def object_path(name: ObjectName) -> str:
    """The object's path in the archive layout."""
    return f"objects/{name.checksum[:2]}/{name.checksum[2:]}.{name.kind.value}"


class Source:
    """An OSTree archive remote over HTTP; the base of every source."""

    kind: SourceKind = "archive"

    def __init__(
        self, session: aiohttp.ClientSession, spec: SourceSpec, timeouts: Timeouts, tmp_dir: Path
    ) -> None:
        self.session = session
        self.url = base_url(spec.url)
        self.name = spec.label
        self.timeouts = timeouts
        self.tmp_dir = tmp_dir
        self.node_id: str | None = None
        self.failure: str | None = None
        self.on_abandon: AbandonHook | None = None
        self._summary_refs: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    @property
    def usable(self) -> bool:
        """False once the source has been abandoned in this pull."""
        return self.failure is None

    def holds_complete(self, checksum: str) -> bool:
        """Whether the source said it holds ``checksum`` with its whole closure (only peers say)."""
        return False

    def abandon(self, reason: str, *, bad_data: bool = False) -> None:
        """Stop using this source for the rest of the pull (the first reason is kept)."""
        if self.failure is None:
            self.failure = reason
            if self.on_abandon is not None:
                self.on_abandon(self, reason, bad_data)

    def _fail(self, failure: SourceFailure) -> str:
        self.abandon(failure.reason, bad_data=failure.bad_data)
        return failure.reason

    # -- refs ------------------------------------------------------------------------------

    async def resolve_ref(self, ref: str) -> str | None:
        """The commit this source says ``ref`` points to, or None; raises SourceFailure."""
        refs = await self._load_summary()
        if ref in refs:
            return refs[ref]
        data = await self.fetch_file(f"refs/heads/{ref}", 1024)
        if data is None:
            return None
        text = data.decode("ascii", "replace").strip()
        if not is_checksum(text):
            raise SourceFailure(f"refs/heads/{ref} does not hold a commit checksum", bad_data=True)
        return text

    async def _load_summary(self) -> dict[str, str]:
        # The summary is optional (a plain `ostree commit` repo has none) and only a hint: the
        # commit it names is verified like any other, so a broken summary is just ignored.
        if self._summary_refs is None:
            self._summary_refs = {}
            try:
                data = await self.fetch_file("summary")
                if data is not None:
                    self._summary_refs = {r.name: r.checksum for r in parse_summary(data).refs}
            except (SourceFailure, CorruptObject):
                pass
        return self._summary_refs

    async def fetch_file(self, path: str, limit: int = MAX_SMALL_DOCUMENT) -> bytes | None:
        """A small file of the archive layout, at most ``limit`` bytes; None when absent; SourceFailure.

        Every small read (:meth:`resolve_ref`, the summary, :meth:`get_small`, the upstream summary
        set) goes through here, so a source that reads the layout another way overrides only this."""
        return await fetch_small(self.session, urljoin(self.url, path), self.timeouts, limit)

    # -- objects ---------------------------------------------------------------------------

    async def get_small(self, name: ObjectName) -> bytes | None:
        """A commit or commitmeta object's bytes, unverified, or None when absent."""
        try:
            return await self.fetch_file(object_path(name))
        except SourceFailure as e:
            self._fail(e)
            raise

    async def download(self, name: ObjectName) -> ObjectBuffer | None:
        """GET one object from the archive layout into a bounded buffer; None when absent."""
        buffer = ObjectBuffer(str(name), self.tmp_dir, filez=name.kind is ObjectType.FILE)
        try:
            async with request(self.session, "GET", urljoin(self.url, object_path(name)), self.timeouts) as r:
                if not check_status(r):
                    buffer.close()
                    return None
                await read_body(r, self.timeouts, buffer.write_async)
        except BaseException:
            buffer.close()
            raise
        return buffer

    async def fetch(self, names: Sequence[ObjectName], sink: Sink, parallel: int) -> dict[ObjectName, str]:
        """Store what this source can of ``names`` through ``sink``; returns the rest with reasons."""
        missing: dict[ObjectName, str] = {}
        queue = iter(names)

        async def worker() -> None:
            for name in queue:
                reason = await self._fetch_one(name, sink)
                if reason is not None:
                    missing[name] = reason

        await run_workers(min(parallel, len(names)), worker)
        return missing

    async def _fetch_one(self, name: ObjectName, sink: Sink) -> str | None:
        """Fetch and store one object from the archive layout; the reason it failed, or None."""
        if self.failure is not None:
            return f"abandoned earlier: {self.failure}"
        try:
            buffer = await self.download(name)
        except SourceFailure as e:
            return self._fail(e)
        except CorruptObject as e:
            return self._fail(SourceFailure(f"served a corrupt object: {e}", bad_data=True))
        if buffer is None:
            return "not found"
        try:
            _, error = await sink(self, [(name, buffer.payload())])
        finally:
            buffer.close()
        if error is not None:
            return self._fail(SourceFailure(f"served a corrupt object: {error}", bad_data=True))
        return None


class PeerSource(Source):
    """A lanshare daemon: batch fetch over :mod:`lanshare.wire`, archive layout for big objects."""

    kind: SourceKind = "peer"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        spec: SourceSpec,
        timeouts: Timeouts,
        tmp_dir: Path,
        info: dict[str, object],
    ) -> None:
        super().__init__(session, spec, timeouts, tmp_dir)
        node_id = info.get("node_id")
        self.node_id = node_id if isinstance(node_id, str) and node_id else None
        collection_id = info.get("collection_id")
        self.collection_id = collection_id if isinstance(collection_id, str) else None
        self._learn(info)
        if spec.name is None and self.node_id:
            self.name = f"{self.node_id} ({self.url})"

    def _learn(self, info: dict[str, object]) -> None:
        features = info.get("features")
        self.features = (
            frozenset(f for f in features if isinstance(f, str))
            if isinstance(features, list)
            else frozenset()
        )
        self.refs = _info_refs(info)
        self.complete_commits = _complete_commits(info)
        self.fetching = _fetching_commits(info)

    def holds_complete(self, checksum: str) -> bool:
        """Whether /lanshare/v1/info listed ``checksum`` as complete (not commit-only)."""
        return checksum in self.complete_commits

    async def refresh_info(self, timeouts: Timeouts) -> bool:
        """GET /lanshare/v1/info again (what the peer holds and fetches now); False if it did not
        answer as the same node.  Never abandons the source: the info is only a hint."""
        try:
            info = await probe_info(self.session, self.url, timeouts)
        except SourceFailure:
            return False
        if info.get("node_id") != self.node_id:
            return False
        self._learn(info)
        return True

    async def resolve_ref(self, ref: str) -> str | None:
        """The ref as /lanshare/v1/info reported it, else as the peer's archive layout has it."""
        if ref in self.refs:
            return self.refs[ref]
        return await super().resolve_ref(ref)

    async def fetch(self, names: Sequence[ObjectName], sink: Sink, parallel: int) -> dict[ObjectName, str]:
        """Fetch in batches, ``parallel`` requests at a time."""
        size = max(_MIN_BATCH, min(_MAX_BATCH, -(-len(names) // parallel)))
        batches = iter([names[i : i + size] for i in range(0, len(names), size)])
        missing: dict[ObjectName, str] = {}
        # Objects the batches answered TOO_LARGE, fetched one by one from the archive layout by
        # whichever workers are free: a big file is often beside other big files, and fetching a
        # batch's big ones in the worker that got that batch made a long tail of one download at
        # a time while the other workers had nothing left to do.
        too_large: list[ObjectName] = []

        async def worker() -> None:
            for batch in batches:
                missing.update(await self._fetch_batch(batch, sink, too_large))
            while too_large:
                name = too_large.pop()
                if (reason := await self._fetch_one(name, sink)) is not None:
                    missing[name] = reason

        await run_workers(min(parallel, len(names)), worker)
        return missing

    async def _fetch_batch(
        self, batch: Sequence[ObjectName], sink: Sink, too_large: list[ObjectName]
    ) -> dict[ObjectName, str]:
        """Fetch one batch; the objects it answers TOO_LARGE are added to ``too_large`` (for
        the caller to fetch) and left out of the result."""
        if self.failure is not None:
            return dict.fromkeys(batch, f"abandoned earlier: {self.failure}")
        outcome: dict[ObjectName, str | None] = {}  # None: stored
        large: list[ObjectName] = []
        decoder = wire.BatchDecoder(list(batch))
        groups = _Groups(self, sink)

        async def on_record(name: ObjectName, data: bytes | None, status: int) -> None:
            if status == wire.TOO_LARGE:
                large.append(name)
            elif data is None:
                outcome[name] = "not held by this peer"

        url = urljoin(self.url, wire.OBJECTS_PATH.lstrip("/"))
        await self._stream(url, {"objects": [str(n) for n in batch]}, decoder, groups, on_record)
        outcome.update(dict.fromkeys(groups.stored))
        too_large += large
        handed_on = set(large)
        missing: dict[ObjectName, str] = {}
        for name in batch:
            if name in handed_on:
                continue
            if name not in outcome:
                missing[name] = f"abandoned: {self.failure}"
            elif (reason := outcome[name]) is not None:
                missing[name] = reason
        return missing

    async def fetch_trees(
        self, commit: str, root_tree: str, root_meta: str, base: str | None, sink: Sink
    ) -> ReceivedTrees:
        """Store ``commit``'s directory metadata from one trees response (:data:`wire.TREES_PATH`),
        each record checked to belong to the tree and verified by the sink.  What the peer leaves
        out is the caller's to fetch; a peer that lies is abandoned."""
        received = ReceivedTrees()
        if self.failure is not None or wire.TREES_FEATURE not in self.features:
            return received
        roots = [ObjectName(root_tree, ObjectType.DIR_TREE), ObjectName(root_meta, ObjectType.DIR_META)]
        listings: dict[str, DirTreeListing] = {}

        def children(name: ObjectName, data: bytes) -> list[ObjectName]:
            _, dirs = listings[name.checksum] = _listing(name, data)
            wanted = []
            for tree, meta in dirs:
                wanted += [ObjectName(tree, ObjectType.DIR_TREE), ObjectName(meta, ObjectType.DIR_META)]
            return wanted

        decoder = wire.TreeDecoder(roots, children)
        groups = _Groups(self, sink, in_flight=_TREE_GROUPS_IN_FLIGHT, group_objects=_TREE_GROUP_OBJECTS)
        url = urljoin(self.url, wire.TREES_PATH.lstrip("/"))
        # 404: it does not hold that commit after all; nothing is lost, the levels walk fetches it.
        await self._stream(url, {"commit": commit, "base": base}, decoder, groups, None, not_found_ok=True)
        for name in groups.stored:
            received.stored.add(name)
            if name.kind is ObjectType.DIR_TREE:
                received.listings[name.checksum] = listings[name.checksum]
        return received

    async def _stream(
        self,
        url: str,
        body: dict[str, object],
        decoder: wire.BatchDecoder,
        groups: _Groups,
        on_record: Callable[[ObjectName, bytes | None, int], Awaitable[None]] | None,
        *,
        not_found_ok: bool = False,
    ) -> None:
        """POST ``body`` and store the records of the batch-framed answer a group at a time, as they
        arrive (memory stays at about one group plus one chunk per request).  A failure abandons
        this source; complete records received before it are still checked and kept."""

        async def on_chunk(chunk: bytes) -> None:
            for name, data, status in decoder.feed(chunk):
                if data is not None:
                    await groups.add(name, data)
                elif on_record is not None:
                    await on_record(name, data, status)

        try:
            async with request(self.session, "POST", url, self.timeouts, json=body) as response:
                if response.status == 404 and not_found_ok:
                    return
                if response.status != 200:
                    raise SourceFailure(
                        f"{url.rsplit('/', 1)[-1]} request: HTTP {response.status} {response.reason or ''}"
                    )
                await read_body(response, self.timeouts, on_chunk)
            decoder.finish()
        except wire.WireError as e:
            self._fail(SourceFailure(f"broke the batch protocol: {e}", bad_data=True))
        except SourceFailure as e:
            self._fail(e)
        except BaseException:
            groups.cancel()  # the pull is stopping: no group stored after this
            raise
        try:
            await groups.flush()
        except SourceFailure as e:
            self._fail(e)


class _Groups:
    """Hands a source's records to the sink in groups of about :data:`_GROUP_BYTES` (or
    :data:`_GROUP_OBJECTS`): storing costs one hop per group, not per object, and memory stays
    bounded per request.  Up to ``in_flight`` groups are stored while more records arrive (one
    stream alone must not wait for each group's disk writes); ``stored`` lists what the sink
    stored."""

    def __init__(
        self, source: Source, sink: Sink, in_flight: int = 1, group_objects: int = _GROUP_OBJECTS
    ) -> None:
        self.source = source
        self.sink = sink
        self.in_flight = in_flight
        self.group_objects = group_objects
        self.stored: list[ObjectName] = []
        self._group: list[tuple[ObjectName, bytes | BinaryIO]] = []
        self._bytes = 0
        self._storing: list[asyncio.Task[None]] = []

    async def add(self, name: ObjectName, data: bytes) -> None:
        self._group.append((name, data))
        self._bytes += len(data)
        if self._bytes >= _GROUP_BYTES or len(self._group) >= self.group_objects:
            present, self._group, self._bytes = self._group, [], 0
            while len(self._storing) >= self.in_flight:
                await self._storing.pop(0)
            self._storing.append(asyncio.create_task(self._store(present)))

    async def flush(self) -> None:
        """Store the group so far and wait for every group; SourceFailure when an object in one
        of them was corrupt (what the others stored stays stored)."""
        present, self._group, self._bytes = self._group, [], 0
        if present:
            self._storing.append(asyncio.create_task(self._store(present)))
        storing, self._storing = self._storing, []
        failures = [r for r in await asyncio.gather(*storing, return_exceptions=True) if r is not None]
        if failures:
            raise failures[0]

    def cancel(self) -> None:
        """Stop waiting for the groups being stored (what a worker already wrote stays)."""
        for task in self._storing:
            task.cancel()
        self._storing = []

    async def _store(self, present: list[tuple[ObjectName, bytes | BinaryIO]]) -> None:
        stored, error = await self.sink(self.source, present)
        self.stored.extend(name for name, _ in present[:stored])
        if error is not None:
            raise SourceFailure(f"served a corrupt object: {error}", bad_data=True)


# A dirtree's checksums: its files, and (dirtree, dirmeta) of each subdirectory.
DirTreeListing = tuple[list[str], list[tuple[str, str]]]


@dataclass
class ReceivedTrees:
    """What a trees response stored: every object, and each dirtree's listing (so the walk after
    it neither asks the disk what is present nor reads those dirtrees back)."""

    stored: set[ObjectName] = field(default_factory=set)
    listings: dict[str, DirTreeListing] = field(default_factory=dict)


def _listing(name: ObjectName, data: bytes) -> DirTreeListing:
    """A dirtree received in a trees response, checked against its name first (so a peer cannot
    widen the tree with a forged one), then read."""
    if sha256_hex(data) != name.checksum:
        raise wire.WireError(f"{name} does not hash to its name")
    try:
        return dirtree_checksums(data, str(name))
    except CorruptObject as e:
        raise wire.WireError(str(e)) from None


async def run_workers(count: int, worker: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``count`` copies of ``worker``; the first error cancels the others and is raised as is."""
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(count):
                group.create_task(worker())
    except BaseExceptionGroup as errors:
        raise errors.exceptions[0] from None


def _info_refs(info: dict[str, object]) -> dict[str, str]:
    """Refs from an info document: ``{"refs": {ref: commit}}`` or a list of ``{ref, commit}``."""
    raw = info.get("refs")
    pairs: Iterator[tuple[object, object]]
    if isinstance(raw, dict):
        pairs = iter(raw.items())
    elif isinstance(raw, list):
        pairs = (
            (item.get("ref", item.get("name")), item.get("commit", item.get("checksum")))
            for item in raw
            if isinstance(item, dict)
        )
    else:
        return {}
    return {r: c for r, c in pairs if isinstance(r, str) and isinstance(c, str) and is_checksum(c)}


def _complete_commits(info: dict[str, object]) -> frozenset[str]:
    """Commits an info document lists as complete: ``{"commits": {checksum: {"complete": true}}}``."""
    commits = info.get("commits")
    if not isinstance(commits, dict):
        return frozenset()
    return frozenset(
        c for c, d in commits.items() if isinstance(d, dict) and d.get("complete") is True and is_checksum(c)
    )


def _fetching_commits(info: dict[str, object]) -> frozenset[str]:
    """Commits an info document says a pull on that node is fetching now: ``{"fetching": [..]}``."""
    fetching = info.get("fetching")
    if not isinstance(fetching, list):
        return frozenset()
    return frozenset(c for c in fetching[:64] if isinstance(c, str) and is_checksum(c))


async def probe_info(session: aiohttp.ClientSession, url: str, timeouts: Timeouts) -> dict[str, object]:
    """GET ``/lanshare/v1/info``: the peer's info document, or SourceFailure if it is not a peer."""
    info_url = urljoin(base_url(url), wire.API_PREFIX.lstrip("/") + "/info")
    data = await fetch_small(session, info_url, timeouts, _INFO_LIMIT)
    if data is None:
        raise SourceFailure("no /lanshare/v1/info (not a lanshare peer)")
    try:
        info = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SourceFailure("/lanshare/v1/info is not JSON") from None
    if not isinstance(info, dict):
        raise SourceFailure("/lanshare/v1/info is not a JSON object")
    return info


async def open_source(
    session: aiohttp.ClientSession, spec: SourceSpec, timeouts: Timeouts, tmp_dir: Path
) -> Source:
    """Make a source from its spec, asking an unknown URL whether it is a lanshare peer."""
    if spec.url.startswith("file:"):
        from lanshare.pull.file_source import FileSource  # it builds on this module

        return FileSource(session, spec, timeouts, tmp_dir)
    if spec.kind == "archive":
        return Source(session, spec, timeouts, tmp_dir)
    # An unknown URL gets a short probe, so a plain web server is not kept waiting on.
    probe_timeouts = timeouts if spec.kind == "peer" else _probe_timeouts(timeouts)
    try:
        info = await probe_info(session, spec.url, probe_timeouts)
    except SourceFailure as e:
        source = Source(session, spec, timeouts, tmp_dir)
        if spec.kind == "peer":
            source.kind = "peer"
            source.failure = f"unreachable: {e.reason}"
        return source
    return PeerSource(session, spec, timeouts, tmp_dir, info)


def _probe_timeouts(timeouts: Timeouts) -> Timeouts:
    return Timeouts(
        connect=min(timeouts.connect, 5.0),
        read=min(timeouts.read, 5.0),
        low_speed_limit=timeouts.low_speed_limit,
        low_speed_time=min(timeouts.low_speed_time, 5.0),
    )


async def open_sources(
    session: aiohttp.ClientSession, specs: Sequence[SourceSpec], timeouts: Timeouts, tmp_dir: Path
) -> list[Source]:
    """Open every source concurrently, keeping their order."""
    return list(await asyncio.gather(*(open_source(session, s, timeouts, tmp_dir) for s in specs)))


__all__ = [
    "PeerProvider",
    "PeerSource",
    "PlanEntry",
    "Sink",
    "Source",
    "SourceSpec",
    "StaticPeers",
    "expand_plan",
    "open_sources",
    "why_no_sources",
]
