"""Regenerate a repository's ``summary`` (and ``summary.sig``), as ``ostree summary -u`` does.

:func:`refresh_summary` (after every pull and at daemon start) decides what the repository serves
(DESIGN §5c), in this order:

1. A publisher's signed or indexed summary (one lanshare did not write) is never rewritten: when it
   no longer lists the refs held, that is logged as a warning and the repo is served as it is —
   unless the admin set ``[repo] regenerate_summary``.
2. An upstream summary set (:mod:`lanshare.ostree.upstream_summary`) whose every ref is held at the
   listed commit is installed byte for byte: ``summary``, ``summary.sig``, ``summary.idx``,
   ``summary.idx.sig`` and ``summaries/…``, so signatures keep verifying through any number of hops.
3. Otherwise lanshare writes its own summary of the refs it holds, carrying over the upstream's
   additional metadata (Flatpak's ``xa.*``), with Flatpak's ``xa.cache`` rebuilt for those refs.

``lanshare-upstream/served.json`` records the SHA-256 of each top-level file lanshare wrote, which is
how a summary lanshare wrote is told from a publisher's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import suppress
from pathlib import Path

from lanshare.errors import Error
from lanshare.gvariant import Variant
from lanshare.ostree import flatpak_cache, signing, upstream_summary
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.ostree.summary import Summary, SummaryRef, build_summary, parse_summary
from lanshare.ostree.upstream_summary import TOP_FILES, SummarySet

log = logging.getLogger(__name__)

# lanshare's own bookkeeping refs (pins) are local state, not something to advertise.
PRIVATE_REF_PREFIX = "lanshare/"


def _entry(repo: Repo, name: str, commit: str) -> SummaryRef:
    data = repo.read_metadata_bytes(commit, ObjectType.COMMIT)
    parsed = repo.load_commit(commit)
    return SummaryRef(name, commit, len(data), parsed.timestamp, parsed.version)


def summary_refs(repo: Repo) -> tuple[list[SummaryRef], dict[str, list[SummaryRef]]]:
    """The main ref list and the other collections' refs, laid out as libostree does."""
    main: list[SummaryRef] = []
    others: dict[str, list[SummaryRef]] = {}
    for (collection_id, name), commit in repo.list_collection_refs().items():
        if name.startswith(PRIVATE_REF_PREFIX):
            continue
        if collection_id == repo.collection_id:
            main.append(_entry(repo, name, commit))
        elif collection_id is not None:
            others.setdefault(collection_id, []).append(_entry(repo, name, commit))
    return main, others


def _current(repo: Repo) -> Summary | None:
    try:
        return parse_summary((repo.path / "summary").read_bytes())
    except (FileNotFoundError, Error):
        return None


def carried_metadata(repo: Repo) -> dict[str, Variant]:
    """Additional metadata to keep: the current summary's, the upstream sets', the repo config's
    ``[flatpak]`` section (later ones win)."""
    carried: dict[str, Variant] = {}
    sets = upstream_summary.load_sets(repo)
    # The repo's own collection last: its keys win over those of other remotes.
    sources = [s.summary for s in sorted(sets, key=lambda s: s.key == repo.collection_id)]
    current = _current(repo)
    for summary in [current, *sources] if current is not None else sources:
        carried.update(flatpak_cache.carried_metadata(summary.extra_metadata))
    carried.update(flatpak_cache.config_metadata(repo.path / "config"))
    return carried


def own_summary(repo: Repo, *, last_modified: int | None = None) -> bytes:
    """lanshare's own summary of the refs held, with the upstream's ``xa.*`` and Flatpak's caches."""
    main, others = summary_refs(repo)
    carried = carried_metadata(repo)
    caches = flatpak_cache.build_caches(repo, {r.name: r.checksum for r in main}, carried)
    return build_summary(
        main,
        collection_id=repo.collection_id,
        collection_map=others,
        last_modified=last_modified,
        extra_metadata={**carried, **caches},
    )


def regenerate_summary(
    repo: Repo,
    *,
    gpg_key_ids: list[str] | None = None,
    gpg_homedir: Path | None = None,
    ed25519_secret_keys: list[str] | None = None,
    last_modified: int | None = None,
) -> bytes:
    """Write ``summary`` atomically; sign it into ``summary.sig`` or remove a stale signature.

    A stale ``summary.idx`` (+ ``.sig``) goes too: it would point clients at old sub-summaries.
    """
    data = own_summary(repo, last_modified=last_modified)
    for name in ("summary.idx", "summary.idx.sig"):
        with suppress(FileNotFoundError):
            os.unlink(repo.path / name)
    sig_path = repo.path / "summary.sig"
    if gpg_key_ids or ed25519_secret_keys:
        signature = signing.sign_summary(
            data,
            gpg_key_ids=gpg_key_ids or (),
            gpg_homedir=gpg_homedir,
            ed25519_secret_keys=ed25519_secret_keys or (),
        )
        # Between the two renames the pair disagrees for an instant, as with libostree; a client
        # that fails to verify fetches both again.
        repo.atomic_write(repo.path / "summary", [data], durable=True)
        repo.atomic_write(sig_path, [signature], durable=True)
    else:
        with suppress(FileNotFoundError):
            os.unlink(sig_path)
        repo.atomic_write(repo.path / "summary", [data], durable=True)
    return data


# --- what the repository serves ---------------------------------------------------------------------

SERVED_FILE = "served.json"
# What refresh_summary found, for the status page and `lanshare status`.
STATE_FILE = "state.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_json(path: Path) -> dict[str, object]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_json(repo: Repo, name: str, value: dict[str, object]) -> None:
    # Bookkeeping only: a repository lanshare may not write to is still served.
    directory = upstream_summary.store_dir(repo)
    try:
        directory.mkdir(exist_ok=True)
        repo.atomic_write(directory / name, [json.dumps(value, sort_keys=True).encode()])
    except OSError as e:
        log.warning("cannot record the summary state in %s: %s", directory, e.strerror or e)


def _top_files(repo: Repo) -> dict[str, bytes]:
    files = {}
    for name in TOP_FILES:
        with suppress(FileNotFoundError):
            files[name] = (repo.path / name).read_bytes()
    return files


def _written_by_lanshare(repo: Repo, top: dict[str, bytes]) -> bool:
    """Whether the top-level summary files are the ones lanshare last wrote (or there are none)."""
    if "summary" not in top:
        return "summary.idx" not in top
    served = _read_json(upstream_summary.store_dir(repo) / SERVED_FILE).get("files")
    return isinstance(served, dict) and served.get("summary") == _sha256(top["summary"])


def summary_state(repo: Repo) -> dict[str, object]:
    """What the repository serves: ``{"served": "upstream"|"own"|"publisher", "warning": str|None}``."""
    return _read_json(upstream_summary.store_dir(repo) / STATE_FILE)


def _record(repo: Repo, served: str, warning: str | None, files: dict[str, bytes]) -> None:
    _write_json(repo, SERVED_FILE, {"kind": served, "files": {n: _sha256(d) for n, d in files.items()}})
    _write_json(repo, STATE_FILE, {"served": served, "warning": warning})


def _out_of_date(repo: Repo, current: Summary | None) -> str | None:
    """Why the current summary does not describe the refs held, or None if it does."""
    if current is None:
        return "it cannot be read"
    main, others = summary_refs(repo)
    held = {(repo.collection_id, r.name): r.checksum for r in main}
    held.update({(cid, r.name): r.checksum for cid, refs in others.items() for r in refs})
    listed = {(current.collection_id, r.name): r.checksum for r in current.refs}
    listed.update({(cid, r.name): r.checksum for cid, refs in current.collection_map.items() for r in refs})
    if held == listed:
        return None
    differ = sorted({name for (_, name), _ in held.items() ^ listed.items()})
    more = ", …" if len(differ) > 5 else ""
    return f"it does not list the refs held ({', '.join(differ[:5])}{more})"


def _install(repo: Repo, summary_set: SummarySet, top: dict[str, bytes]) -> None:
    """Serve ``summary_set`` byte for byte: sub-summaries first, so an index never names a missing one."""
    summaries_dir = repo.path / "summaries"
    for name, data in summary_set.files.items():
        if name.startswith("summaries/"):
            summaries_dir.mkdir(exist_ok=True)
            if not (repo.path / name).exists():
                repo.atomic_write(repo.path / name, [data], durable=True)
    for name in TOP_FILES:
        if name in summary_set.files:
            if top.get(name) != summary_set.files[name]:
                repo.atomic_write(repo.path / name, [summary_set.files[name]], durable=True)
        else:
            with suppress(FileNotFoundError):
                os.unlink(repo.path / name)


def _remove_installed(repo: Repo, keep: set[str]) -> None:
    """Remove the ``summaries/`` files lanshare installed that the served set no longer has."""
    served = _read_json(upstream_summary.store_dir(repo) / SERVED_FILE).get("files")
    for name in served if isinstance(served, dict) else {}:
        if not isinstance(name, str) or name in keep:
            continue
        if name.startswith("summaries/") and "/" not in name.removeprefix("summaries/"):
            with suppress(FileNotFoundError):
                os.unlink(repo.path / name)


def refresh_summary(repo: Repo, *, regenerate: bool = False) -> bool:
    """Bring the served summary in line with the refs held (see the module docstring); True if written.

    ``regenerate``: ``[repo] regenerate_summary`` — rewrite even a publisher's signed summary.
    """
    top = _top_files(repo)
    current = _current(repo)
    ours = _written_by_lanshare(repo, top)
    if not ours and not regenerate and ("summary.sig" in top or "summary.idx" in top):
        reason = _out_of_date(repo, current)
        warning = None
        if reason is not None:
            warning = (
                f"the signed summary of {repo.path} is out of date: {reason}; served as it is "
                "(lanshare cannot re-sign it: run `flatpak build-update-repo` or `ostree summary -u`, "
                "or set [repo] regenerate_summary = true)"
            )
            log.warning("%s", warning)
        _write_json(repo, STATE_FILE, {"served": "publisher", "warning": warning})
        return False
    main, others = summary_refs(repo)
    held = {r.name for r in main} | {r.name for refs in others.values() for r in refs}
    chosen = upstream_summary.servable(repo, upstream_summary.load_sets(repo), held)
    if chosen is not None:
        changed = any(top.get(n) != chosen.files.get(n) for n in TOP_FILES)
        if changed:
            _install(repo, chosen, top)
            log.info("serving the upstream summary of %s (%s) as is", chosen.key, chosen.source)
        _remove_installed(repo, set(chosen.files))
        _record(repo, "upstream", None, chosen.files)
        return changed
    data = own_summary(repo, last_modified=current.last_modified if current is not None else None)
    if top.get("summary") == data and not {"summary.sig", "summary.idx", "summary.idx.sig"} & top.keys():
        _record(repo, "own", None, {"summary": data})
        return False
    if "summary.sig" in top or "summary.idx.sig" in top:
        # The daemon holds no signing key: a stale signature would only make verifying clients fail.
        log.warning("refs changed since the summary was signed: an unsigned summary is served instead")
    data = regenerate_summary(repo)
    with suppress(FileNotFoundError):
        os.unlink(repo.path / "summary.sig")
    _remove_installed(repo, set())
    _record(repo, "own", None, {"summary": data})
    return True
