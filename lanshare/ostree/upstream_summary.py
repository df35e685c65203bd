"""The *upstream* summary set: a source's ``summary`` files, kept byte for byte to serve them on.

A cache cannot re-sign (DESIGN §5c).  After a pull, lanshare fetches the source's ``summary``,
``summary.sig`` and, when the source is indexed (Flatpak ≥ 1.9), ``summary.idx``,
``summary.idx.sig``, the ``summaries/<sha256>.gz`` sub-summaries the index names and
``summaries/<sha256 of summary.idx>.idx.sig``.  The set is kept per collection id (or per source
URL without one) under ``<repo>/lanshare-upstream/`` — a directory no archive path reaches:

    lanshare-upstream/<key>/current          the id of the current set (written atomically)
    lanshare-upstream/<key>/<set id>/…        the files, as fetched, plus ``source`` (the URL)

The sub-summaries are content-addressed (the name is the SHA-256 of the uncompressed file), so a
set whose files do not match their names is refused.  Whether a set may be *served* is decided
later (:func:`servable`): only while the repository holds every ref it lists at the listed commit.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import shutil
import zlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lanshare import gvariant
from lanshare.errors import CorruptObject, Error
from lanshare.gvariant import GVariantError
from lanshare.ostree import signing
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.ostree.summary import Summary, SummaryRef, parse_summary

log = logging.getLogger(__name__)

STORE_DIR = "lanshare-upstream"
# The top-level files of a set, in the order they are installed (signatures after what they sign
# is not possible for both pairs at once; libostree has the same instant of disagreement).
TOP_FILES = ("summary", "summary.sig", "summary.idx", "summary.idx.sig")
INDEX_SIGNATURE = "(a{s(ayaaya{sv})}a{sv})"
# A sub-summary is gzip-compressed; this bounds what one may inflate to.
MAX_SUBSUMMARY = 256 * 1024 * 1024
# Flatpak makes one subset per architecture (and flavour); more than this is not a real remote.
MAX_SUBSETS = 256
_KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,255}", re.ASCII)
_DIGEST_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)

# GET a path under the source's URL: the bytes, or None when the source answers 404.
Fetch = Callable[[str], Awaitable[bytes | None]]


class UpstreamError(Error):
    """A source's summary set is inconsistent: a file does not match its name, or does not parse."""


@dataclass(frozen=True)
class SummarySet:
    """One stored (or just fetched) upstream summary set."""

    key: str
    files: dict[str, bytes]  # relative path → bytes: TOP_FILES present, then summaries/…
    source: str

    @property
    def set_id(self) -> str:
        digest = hashlib.sha256()
        for name in TOP_FILES:
            digest.update(hashlib.sha256(self.files.get(name, b"")).digest())
        return digest.hexdigest()[:32]

    @property
    def summary(self) -> Summary:
        return parse_summary(self.files["summary"])

    @property
    def signed(self) -> bool:
        return "summary.sig" in self.files or "summary.idx.sig" in self.files


def store_dir(repo: Repo) -> Path:
    """Where lanshare keeps its summary bookkeeping in ``repo``."""
    return repo.path / STORE_DIR


def set_key(summary: Summary, source: str) -> str:
    """Sets are kept per collection id; a remote without one is keyed by its URL."""
    if summary.collection_id:
        return summary.collection_id
    return "url-" + hashlib.sha256(source.encode()).hexdigest()[:16]


# --- reading the index ------------------------------------------------------------------------------


def index_digests(index: bytes) -> list[str]:
    """The sub-summary digests ``summary.idx`` names (one per subset: arch, or arch + flavour)."""
    try:
        subsets, _ = gvariant.decode(INDEX_SIGNATURE, index)
    except GVariantError as e:
        raise UpstreamError(f"summary.idx is not a summary index ({e})") from None
    if len(subsets) > MAX_SUBSETS:
        raise UpstreamError(f"summary.idx lists {len(subsets)} subsets (at most {MAX_SUBSETS} are fetched)")
    digests = []
    for name, (digest, _history, _metadata) in subsets.items():
        if len(digest) != 32:
            raise UpstreamError(f"summary.idx: subset {name!r} has a {len(digest)}-byte digest")
        digests.append(digest.hex())
    return sorted(set(digests))


def subsummary(data: bytes, digest: str) -> Summary:
    """A ``summaries/<digest>.gz`` file checked against its name, parsed."""
    try:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        raw = inflater.decompress(data, MAX_SUBSUMMARY)
        if inflater.unconsumed_tail or not inflater.eof:
            raise UpstreamError(f"summaries/{digest}.gz is truncated or larger than {MAX_SUBSUMMARY} bytes")
    except (zlib.error, EOFError, gzip.BadGzipFile) as e:
        raise UpstreamError(f"summaries/{digest}.gz is not gzip ({e})") from None
    if hashlib.sha256(raw).hexdigest() != digest:
        raise UpstreamError(f"summaries/{digest}.gz does not match its name")
    try:
        return parse_summary(raw)
    except CorruptObject as e:
        raise UpstreamError(f"summaries/{digest}.gz: {e}") from None


def listed_refs(summary_set: SummarySet) -> Iterator[tuple[str | None, SummaryRef]]:
    """Every (collection id, ref) the set promises: the summary's and every sub-summary's."""
    summaries = [summary_set.summary]
    for name, data in summary_set.files.items():
        if name.startswith("summaries/") and name.endswith(".gz"):
            summaries.append(subsummary(data, name.removeprefix("summaries/").removesuffix(".gz")))
    for summary in summaries:
        for ref in summary.refs:
            yield summary.collection_id, ref
        for collection_id, refs in summary.collection_map.items():
            for ref in refs:
                yield collection_id, ref


# --- fetching ---------------------------------------------------------------------------------------


async def fetch_set(fetch: Fetch, source: str, known: SummarySet | None = None) -> SummarySet | None:
    """Fetch a source's summary set (None if it has no summary); UpstreamError if inconsistent.

    ``known``: the set kept from this source before.  When its signatures and index are the ones
    the source serves now, the (possibly large) summary is not fetched again.
    """
    small = {name: data for name in TOP_FILES[1:] if (data := await fetch(name)) is not None}
    if known is not None and small and all(known.files.get(n) == small.get(n) for n in TOP_FILES[1:]):
        return known
    summary = await fetch("summary")
    if summary is None:
        return None
    try:
        parsed = parse_summary(summary)
    except CorruptObject as e:
        raise UpstreamError(str(e)) from None
    files: dict[str, bytes] = {"summary": summary, **small}
    if "summary.idx" in files:
        index = files["summary.idx"]
        for digest in index_digests(index):
            data = await fetch(f"summaries/{digest}.gz")
            if data is None:
                raise UpstreamError(f"summary.idx names summaries/{digest}.gz, which the source lacks")
            subsummary(data, digest)
            files[f"summaries/{digest}.gz"] = data
        index_sig = f"summaries/{hashlib.sha256(index).hexdigest()}.idx.sig"
        if (data := await fetch(index_sig)) is not None:
            files[index_sig] = data
    return SummarySet(set_key(parsed, source), files, source)


def check_signatures(summary_set: SummarySet, gpg_keyring: Path | None, ed25519_keys: Sequence[str]) -> None:
    """Verify ``summary.sig`` and ``summary.idx.sig`` with these keys; UpstreamError if one fails.

    A pair fetched while the publisher was rewriting it (a new summary, the old signature) fails
    here instead of being served to clients that would all refuse it.
    """
    pairs = (("summary", "summary.sig"), ("summary.idx", "summary.idx.sig"))
    for signed, signature in pairs:
        if signature in summary_set.files and signed in summary_set.files:
            try:
                signing.verify_summary_signature(
                    summary_set.files[signed],
                    summary_set.files[signature],
                    gpg_keyring=gpg_keyring,
                    ed25519_keys=ed25519_keys,
                )
            except Error as e:
                raise UpstreamError(f"{signature}: {e}") from None


# --- the store --------------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(repo: Repo, summary_set: SummarySet) -> bool:
    """Keep ``summary_set`` as the current set of its key; False if it already was."""
    if not _KEY_RE.fullmatch(summary_set.key) or summary_set.key.startswith("."):
        raise UpstreamError(f"cannot keep a summary set under {summary_set.key!r}")
    key_dir = store_dir(repo) / summary_set.key
    set_id = summary_set.set_id
    current = key_dir / "current"
    try:
        if current.read_text().strip() == set_id and (key_dir / set_id).is_dir():
            return False
    except FileNotFoundError:
        pass
    key_dir.mkdir(parents=True, exist_ok=True)
    target = key_dir / set_id
    if not target.is_dir():
        staging = key_dir / f".{set_id}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "summaries").mkdir(parents=True)
        for name, data in summary_set.files.items():
            _write(staging / name, data)
        _write(staging / "source", summary_set.source.encode())
        try:
            os.rename(staging, target)
        except OSError:
            # Another process stored the same set first: same id, same bytes.
            shutil.rmtree(staging, ignore_errors=True)
    _write(current, f"{set_id}\n".encode())
    for old in key_dir.iterdir():
        if old.is_dir() and old.name != set_id and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return True


def load_sets(repo: Repo) -> list[SummarySet]:
    """Every current stored set, by key; unreadable ones are skipped with a warning."""
    root = store_dir(repo)
    sets = []
    try:
        keys = sorted(p.name for p in root.iterdir() if p.is_dir() and _KEY_RE.fullmatch(p.name))
    except FileNotFoundError:
        return []
    for key in keys:
        try:
            set_dir = root / key / (root / key / "current").read_text().strip()
            files = {name: (set_dir / name).read_bytes() for name in TOP_FILES if (set_dir / name).exists()}
            for path in sorted((set_dir / "summaries").iterdir()):
                files[f"summaries/{path.name}"] = path.read_bytes()
            sets.append(SummarySet(key, files, (set_dir / "source").read_text()))
        except OSError as e:
            log.warning("upstream summary %s: cannot read it: %s", key, e)
    return sets


# --- serving ----------------------------------------------------------------------------------------


def missing_refs(repo: Repo, summary_set: SummarySet) -> list[str]:
    """The refs the set lists that this repository does not hold complete at the listed commit."""
    held = repo.list_collection_refs()
    by_name = {name: commit for (_, name), commit in held.items()}
    missing = []
    for collection_id, ref in listed_refs(summary_set):
        commit = held.get((collection_id, ref.name), by_name.get(ref.name))
        complete = (
            commit == ref.checksum
            and repo.has_object(commit, ObjectType.COMMIT)
            and not repo.is_partial(commit)
        )
        if not complete:
            missing.append(ref.name)
    return sorted(set(missing))


def servable(repo: Repo, sets: list[SummarySet], held: set[str]) -> SummarySet | None:
    """The set to serve as is: one whose every ref is held, the repo's own collection first.

    ``held``: the public refs this repository holds.  Stock ``ostree pull`` does not look past the
    summary for a ref ("No such branch in repository summary"), so an unsigned set is served only
    when it lists every one of them; a signed set is served anyway, since verifying clients
    accept nothing else.
    """
    ordered = sorted(sets, key=lambda s: s.key != repo.collection_id)
    for summary_set in ordered:
        try:
            if missing_refs(repo, summary_set):
                continue
            if summary_set.signed or held <= {r.name for _, r in listed_refs(summary_set)}:
                return summary_set
        except (Error, OSError) as e:
            log.warning("upstream summary %s: not served: %s", summary_set.key, e)
    return None
