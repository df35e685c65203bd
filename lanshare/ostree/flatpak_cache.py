"""Flatpak's summary caches (``xa.cache``, ``xa.sparse-cache``), rebuilt from the commits held here.

``flatpak remote-ls -d`` and ``flatpak install`` read each ref's metadata and sizes from the
summary, not from the commit: a summary without ``xa.cache`` makes them fail ("No summary or
Flatpak cache available").  Flatpak 1.14's ``build-update-repo`` writes, for every Flatpak ref:

- ``xa.cache``: ``v`` holding ``a{s(tts)}`` — ref → (installed size, download size, the
  ``metadata`` keyfile), both sizes big-endian.  The sizes and metadata come from the commit's
  ``xa.installed-size`` / ``xa.download-size`` / ``xa.metadata`` when it has them (``build-export``
  writes them); otherwise (appstream commits) they are summed over the tree: every regular file
  rounded up to 512 bytes installed, every content object's stored size downloaded.
- ``xa.sparse-cache``: ``a{sa{sv}}`` — only refs whose commit carries end-of-life data, with
  ``eol`` / ``eolr`` (``ostree.endoflife`` / ``ostree.endoflife-rebase``).  Other sparse fields
  (token types, extra-data sizes) are not rebuilt.
- ``xa.cache-version``: ``u`` 2.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path

from lanshare.gvariant import Variant, swap64
from lanshare.ostree import content
from lanshare.ostree.objects import Commit, ObjectType
from lanshare.ostree.repo import Repo
from lanshare.ostree.summary import glib_dict_order

CACHE_KEY = "xa.cache"
SPARSE_CACHE_KEY = "xa.sparse-cache"
CACHE_VERSION_KEY = "xa.cache-version"
CACHE_VERSION = 2
CACHE_SIGNATURE = "a{s(tts)}"
SPARSE_SIGNATURE = "a{sa{sv}}"
# Refs Flatpak itself publishes; OS refs in a mixed cache get no Flatpak cache entry.
FLATPAK_REF_PREFIXES = ("app/", "runtime/", "appstream/", "appstream2/", "screenshots/")
_SPARSE_KEYS = (("ostree.endoflife", "eol"), ("ostree.endoflife-rebase", "eolr"))


def is_flatpak_ref(name: str) -> bool:
    """Whether ``name`` is one of the refs Flatpak lists in its caches."""
    return name.startswith(FLATPAK_REF_PREFIXES)


def _meta_value(commit: Commit, key: str, signature: str) -> object | None:
    value = commit.metadata.get(key)
    if isinstance(value, Variant) and value.signature == signature:
        result: object = value.value
        return result
    return None


def tree_sizes(repo: Repo, root_tree: str) -> tuple[int, int]:
    """(installed, download) bytes of a tree, summed as ``flatpak build-update-repo`` does."""
    installed = download = 0
    pending, seen = [root_tree], set()
    while pending:
        checksum = pending.pop()
        if checksum in seen:
            continue
        seen.add(checksum)
        tree = repo.load_dirtree(checksum, verify=False)
        pending.extend(sub for _, sub, _ in tree.dirs)
        for name, file_checksum in tree.files:
            path = repo.object_path(file_checksum, ObjectType.FILE)
            with path.open("rb") as f:
                header = content.read_archive_header(f, f"{file_checksum}.filez ({name})")
                stored = os.fstat(f.fileno()).st_size
            if not header.is_symlink:  # Flatpak counts regular files only, in both sizes
                installed += (header.size + 511) // 512 * 512
                download += stored
    return installed, download


def cache_entry(repo: Repo, commit: Commit) -> tuple[int, int, str]:
    """One ``xa.cache`` value (sizes big-endian, as stored) for a commit held here."""
    installed = _meta_value(commit, "xa.installed-size", "t")
    download = _meta_value(commit, "xa.download-size", "t")
    metadata = _meta_value(commit, "xa.metadata", "s")
    if isinstance(installed, int) and isinstance(download, int):
        # Already big-endian in the commit: copied as is.
        sizes = (installed, download)
    else:
        walked = tree_sizes(repo, commit.root_tree)
        sizes = (swap64(walked[0]), swap64(walked[1]))
    return sizes[0], sizes[1], metadata if isinstance(metadata, str) else ""


def sparse_entry(commit: Commit) -> dict[str, Variant]:
    """The ``xa.sparse-cache`` fields of a commit (empty for most)."""
    entry: dict[str, Variant] = {}
    for key, short in _SPARSE_KEYS:
        value = _meta_value(commit, key, "s")
        if isinstance(value, str):
            entry[short] = Variant("s", value)
    # Flatpak fills it through a GVariantDict: GLib's hash-table order on disk.
    return {key: entry[key] for key in glib_dict_order(entry)}


def build_caches(repo: Repo, refs: Mapping[str, str], upstream: Mapping[str, Variant]) -> dict[str, Variant]:
    """The ``xa.cache*`` keys for the Flatpak refs among ``refs`` (name → commit held here).

    Returns nothing when no ref is a Flatpak ref and the upstream had no Flatpak cache, so plain
    OSTree summaries stay as ``ostree summary -u`` writes them.
    """
    flatpak_refs = sorted(name for name in refs if is_flatpak_ref(name))
    if not flatpak_refs and CACHE_KEY not in upstream:
        return {}
    cache: dict[str, tuple[int, int, str]] = {}
    sparse: dict[str, dict[str, Variant]] = {}
    for name in flatpak_refs:
        commit = repo.load_commit(refs[name], verify=False)
        cache[name] = cache_entry(repo, commit)
        if entry := sparse_entry(commit):
            sparse[name] = entry
    return {
        CACHE_VERSION_KEY: Variant("u", CACHE_VERSION),
        CACHE_KEY: Variant("v", Variant(CACHE_SIGNATURE, cache)),
        SPARSE_CACHE_KEY: Variant(SPARSE_SIGNATURE, sparse),
    }


def carried_metadata(upstream: Mapping[str, Variant]) -> dict[str, Variant]:
    """The upstream's additional metadata minus the per-ref caches (those are rebuilt)."""
    rebuilt = {CACHE_KEY, SPARSE_CACHE_KEY, CACHE_VERSION_KEY}
    return {k: v for k, v in upstream.items() if k not in rebuilt}


# ``[flatpak]`` keys of a repository's ``config`` that ``build-update-repo`` copies into the summary.
_CONFIG_KEYS = ("title", "comment", "description", "homepage", "icon", "default-branch", "redirect-url")


def config_metadata(config_file: Path) -> dict[str, Variant]:
    """``xa.title`` and friends from the ``[flatpak]`` section of a repository's ``config``."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(config_file.read_text())
    except (OSError, UnicodeDecodeError, configparser.Error):
        return {}
    if not parser.has_section("flatpak"):
        return {}
    section = parser["flatpak"]
    return {f"xa.{key}": Variant("s", section[key]) for key in _CONFIG_KEYS if key in section}
