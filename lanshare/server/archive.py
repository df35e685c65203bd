"""The OSTree archive layout over HTTP: a whitelist of repository paths, opened without following links.

A request path is matched against the names libostree and Flatpak fetch (``config``, ``summary``,
``summary.idx``, their signatures, ``summaries/…``, objects, refs, static deltas) *before* any
path is built, so ``..``, NUL, backslashes, ``tmp/``, ``state/``, ``lanshare-upstream/`` and
everything else never reach the filesystem.  The file is then opened refusing any symlink
(:mod:`lanshare.server.opener`), so a symlink planted in the repository cannot lead outside it
either.
"""

from __future__ import annotations

import email.utils
import functools
import os
import re
from typing import NamedTuple

from aiohttp import web

from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import RepoError, validate_collection_id, validate_ref
from lanshare.ostree.repo_summary import PRIVATE_REF_PREFIX
from lanshare.server.limits import BodyAborted, BodyWriter, PeerLedger, abort, peer_of
from lanshare.server.opener import FileOpener

IMMUTABLE = "public, max-age=31536000, immutable"
# Refs, summary and signatures change in place: caches must ask again, the ETag makes that cheap.
REVALIDATE = "no-cache"

_EXTENSIONS = "|".join(re.escape(t.value) for t in ObjectType)
_OBJECT_RE = re.compile(rf"objects/([0-9a-f]{{2}})/([0-9a-f]{{62}})\.({_EXTENSIONS})", re.ASCII)
# libostree names deltas by modified base64 ('/' written as '_') of the commit checksums.
_B64 = "[A-Za-z0-9+_]"
_DELTA_RE = re.compile(
    rf"deltas/{_B64}{{2}}/{_B64}{{41}}(?:-{_B64}{{43}})?/(?:superblock|[0-9]{{1,6}})", re.ASCII
)
_DELTA_INDEX_RE = re.compile(rf"delta-indexes/{_B64}{{2}}/{_B64}{{41}}\.index", re.ASCII)
_TOP_FILES = frozenset({"config", "summary", "summary.sig", "summary.idx", "summary.idx.sig"})
# Flatpak's indexed summaries: sub-summaries named by the SHA-256 of their content, deltas
# between two of them, and the signatures of earlier summary.idx versions.
_SUBSUMMARY_RE = re.compile(r"summaries/[0-9a-f]{64}\.gz", re.ASCII)
_SUMMARIES_RE = re.compile(r"summaries/[0-9a-f]{64}(?:-[0-9a-f]{64}\.delta|\.idx\.sig)", re.ASCII)
_MAX_PATH = 1024
_COMMIT_META = ObjectType.COMMIT_META.value
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII)


class ArchiveFile(NamedTuple):
    """A whitelisted repository file: its path components and how long caches may keep it."""

    parts: tuple[str, ...]
    cache_control: str


def _valid_ref(name: str) -> bool:
    try:
        validate_ref(name)
    except RepoError:
        return False
    return not name.startswith(PRIVATE_REF_PREFIX)


def _ref_file(path: str) -> ArchiveFile | None:
    parts = path.split("/")
    if parts[:2] == ["refs", "heads"] and _valid_ref("/".join(parts[2:])):
        return ArchiveFile(tuple(parts), REVALIDATE)
    if parts[:2] == ["refs", "mirrors"] and len(parts) > 3 and _valid_ref("/".join(parts[3:])):
        try:
            validate_collection_id(parts[2])
        except RepoError:
            return None
        return ArchiveFile(tuple(parts), REVALIDATE)
    return None


def archive_file(path: str) -> ArchiveFile | None:
    """The repository file a (decoded, prefix-free) request path names, or None if it is not served."""
    if len(path) > _MAX_PATH or not path.isascii():
        return None
    if path in _TOP_FILES:
        return ArchiveFile((path,), REVALIDATE)
    if match := _OBJECT_RE.fullmatch(path):
        # Detached metadata is named after its commit, not its bytes: signatures get added to it.
        mutable = match.group(3) == _COMMIT_META
        return ArchiveFile(tuple(path.split("/")), REVALIDATE if mutable else IMMUTABLE)
    if _DELTA_RE.fullmatch(path) or _DELTA_INDEX_RE.fullmatch(path):
        # A delta regenerated with other options has other bytes under the same name.
        return ArchiveFile(tuple(path.split("/")), REVALIDATE)
    if _SUBSUMMARY_RE.fullmatch(path):
        return ArchiveFile(tuple(path.split("/")), IMMUTABLE)
    if _SUMMARIES_RE.fullmatch(path):
        return ArchiveFile(tuple(path.split("/")), REVALIDATE)
    if path.startswith("refs/"):
        return _ref_file(path)
    return None


def _parse_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """(start, count) for one satisfiable range; None to ignore the header; False if unsatisfiable."""
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None:
        # Multiple ranges or another unit: answering with the whole file is allowed.
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0:
            return False
        return max(0, size - suffix), min(suffix, size)
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None
    if start >= size:
        return False
    return start, end - start + 1


def _not_modified(request: web.BaseRequest, etag: str, mtime: int) -> bool:
    if_none_match = request.if_none_match
    if if_none_match is not None:
        return any(tag.value in ("*", etag) for tag in if_none_match)
    since = request.if_modified_since
    return since is not None and mtime <= since.timestamp()


def _range_applies(request: web.BaseRequest, etag: str, mtime: int) -> bool:
    """If-Range: honour Range only while the client's copy is still current."""
    value = request.headers.get("If-Range")
    if value is None:
        return True
    if value.startswith('"'):
        return value == f'"{etag}"'
    since = request.if_range
    return since is not None and mtime <= since.timestamp()


@functools.lru_cache(maxsize=1024)
def _http_date(mtime: int) -> str:
    # Formatting a date costs more than the rest of the headers; files written together share it.
    return email.utils.formatdate(mtime, usegmt=True)


def _plan(
    request: web.BaseRequest, file: ArchiveFile, st: os.stat_result
) -> tuple[int, int, int, dict[str, str]]:
    """(status, start, count, headers) of the answer: 200, 206 or 304; raises 416."""
    size, mtime = st.st_size, int(st.st_mtime)
    etag = f"{st.st_mtime_ns:x}-{size:x}"
    headers = {
        "ETag": f'"{etag}"',
        "Last-Modified": _http_date(mtime),
        "Cache-Control": file.cache_control,
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    if _not_modified(request, etag, mtime):
        del headers["Content-Type"]
        return 304, 0, 0, headers
    header = request.headers.get("Range")
    if header is None or not _range_applies(request, etag, mtime):
        return 200, 0, size, headers
    wanted = _parse_range(header, size)
    if wanted is False:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    if not isinstance(wanted, tuple):
        return 200, 0, size, headers
    start, count = wanted
    headers["Content-Range"] = f"bytes {start}-{start + count - 1}/{size}"
    return 206, start, count, headers


async def send_file(
    request: web.BaseRequest, opener: FileOpener, file: ArchiveFile, ledger: PeerLedger
) -> web.StreamResponse:
    """Answer GET/HEAD for one repository file: conditional requests, one byte range, then the body."""
    opened = await opener.open(file.parts)
    if opened is None:
        raise web.HTTPNotFound()
    try:
        status, start, count, headers = _plan(request, file, opened.stat)
        if opened.data is not None and status != 304 and request.method != "HEAD":
            whole = start == 0 and count == len(opened.data)
            body = opened.data if whole else opened.data[start : start + count]
            if ledger.limits.max_upload_rate is None:
                ledger.count_bytes(peer_of(request), len(body))  # no bucket to wait for
            else:
                await ledger.pace(peer_of(request), len(body))
            # Headers and body leave in one write.
            return web.Response(status=status, headers=headers, body=body)
        response = web.StreamResponse(status=status, headers=headers)
        if status != 304:
            response.content_length = count
        await response.prepare(request)
        if status == 304 or request.method == "HEAD" or count == 0:
            await response.write_eof()
            return response
        writer = BodyWriter(request, response, ledger)
        try:
            if writer.bucket is None:
                await writer.sendfile(opened.fd, start, count)
            else:
                await writer.copy(opened.fd, start, count)  # rate-limited: paced in small writes
        except BodyAborted:
            abort(request)
            return response
        await response.write_eof()
        return response
    finally:
        opened.close()
