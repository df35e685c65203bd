"""Which summary a repository serves: a publisher's signed one kept, an upstream set only when held.

Real repositories made with ``lanshare commit`` and real GPG signatures; the Flatpak side is in
``tests/test_flatpak.py``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import shutil
from pathlib import Path

import pytest

from lanshare import gvariant
from lanshare.config import load_config
from lanshare.gvariant import Variant
from lanshare.ostree import upstream_summary
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo, validate_ref
from lanshare.ostree.repo_summary import refresh_summary, summary_state
from lanshare.ostree.summary import SummaryRef, build_summary, parse_summary
from lanshare.ostree.upstream_summary import SummarySet, UpstreamError
from lanshare.server.archive import archive_file
from tests.conftest import build_tree, lanshare
from tests.gpg_fixtures import GpgKeys


def _commit(repo: Path, tree: Path, branch: str = "os/stable", *extra: str | Path) -> str:
    assert lanshare("commit", "--repo", repo, "--branch", branch, "--tree", tree, *extra) == 0
    head = Repo.open(repo).read_ref(branch)
    assert head is not None
    return head


def _top(repo: Path) -> dict[str, bytes]:
    names = ("summary", "summary.sig", "summary.idx", "summary.idx.sig")
    return {n: (repo / n).read_bytes() for n in names if (repo / n).exists()}


@pytest.mark.parametrize(
    "path",
    [
        "summary.idx",
        "summary.idx.sig",
        "summaries/" + "a" * 64 + ".gz",
        "summaries/" + "a" * 64 + ".idx.sig",
        "summaries/" + "a" * 64 + "-" + "b" * 64 + ".delta",
    ],
)
def test_indexed_summary_files_are_served(path: str) -> None:
    assert archive_file(path) is not None


@pytest.mark.parametrize(
    "path",
    [
        "summaries/" + "A" * 64 + ".gz",
        "summaries/abc.gz",
        "summaries/../summary",
        "summaries/" + "a" * 64 + ".gz/x",
        "lanshare-upstream/served.json",
        "summary.idx.bak",
    ],
)
def test_other_summary_paths_are_not(path: str) -> None:
    assert archive_file(path) is None


def test_a_publishers_signed_summary_is_never_rewritten_unless_asked(
    tmp_path: Path, gpg_keys: GpgKeys
) -> None:
    repo = tmp_path / "repo"
    tree = build_tree(tmp_path / "tree")
    _commit(repo, tree)
    sign: list[str | Path] = ["--gpg-sign", gpg_keys.trusted.key_id, "--gpg-homedir", gpg_keys.homedir]
    assert lanshare("summary", "--repo", repo, "-u", *sign) == 0
    _commit(repo, build_tree(tmp_path / "tree2", seed=1), "os/next")
    before = _top(repo)
    assert not refresh_summary(Repo.open(repo))
    assert _top(repo) == before
    state = summary_state(Repo.open(repo))
    assert state["served"] == "publisher" and "os/next" in str(state["warning"])
    # The admin asks for regeneration: the refs are listed, the stale signature goes.
    assert refresh_summary(Repo.open(repo), regenerate=True)
    assert [r.name for r in parse_summary((repo / "summary").read_bytes()).refs] == ["os/next", "os/stable"]
    assert not (repo / "summary.sig").exists()


def test_an_unsigned_summary_is_regenerated_keeping_its_additional_metadata(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    head = _commit(repo_path, build_tree(tmp_path / "tree"))
    repo = Repo.open(repo_path)
    entry = SummaryRef("os/stable", head, len(repo.read_metadata_bytes(head, ObjectType.COMMIT)))
    extra = {"xa.title": Variant("s", "Vendor OS"), "org.example.key": Variant("u", 7)}
    (repo_path / "summary").write_bytes(build_summary([entry], extra_metadata=extra))
    _commit(repo_path, build_tree(tmp_path / "tree2", seed=1), "os/next")
    assert refresh_summary(repo)
    served = parse_summary((repo_path / "summary").read_bytes())
    assert [r.name for r in served.refs] == ["os/next", "os/stable"]
    assert served.extra_metadata == extra  # no Flatpak refs: no xa.cache added


def _set_of(repo: Path, source: str) -> SummarySet:
    files = _top(repo)

    async def fetch(path: str) -> bytes | None:
        return files.get(path)

    found = asyncio.run(upstream_summary.fetch_set(fetch, source))
    assert found is not None
    return found


def _cache_holding_stable(path: Path, origin: Path, stable: str, upstream: SummarySet) -> Repo:
    """A cache at ``path`` holding ``origin``'s objects (copied: they stand in for a pull) and
    os/stable at ``stable``, with ``upstream`` saved and its summary refreshed once."""
    cache = Repo.init(path)
    shutil.copytree(origin / "objects", path / "objects", dirs_exist_ok=True)
    cache.write_ref("os/stable", stable)
    upstream_summary.save(cache, upstream)
    refresh_summary(cache)
    return cache


def test_an_upstream_set_is_served_byte_for_byte_only_while_every_ref_is_held(
    tmp_path: Path, gpg_keys: GpgKeys
) -> None:
    origin = tmp_path / "origin"
    tree = build_tree(tmp_path / "tree")
    stable = _commit(origin, tree)
    _commit(origin, tree, "os/next")
    sign: list[str | Path] = ["--gpg-sign", gpg_keys.trusted.key_id, "--gpg-homedir", gpg_keys.homedir]
    assert lanshare("summary", "--repo", origin, "-u", *sign) == 0
    upstream = _set_of(origin, "http://origin.invalid/")
    assert upstream.signed

    cache_path = tmp_path / "cache"
    # Hold os/stable only.
    cache = _cache_holding_stable(cache_path, origin, stable, upstream)
    assert upstream_summary.missing_refs(cache, upstream) == ["os/next"]
    assert not (cache_path / "summary.sig").exists()
    assert summary_state(cache)["served"] == "own"
    # Once os/next is held at the listed commit, the publisher's bytes are served.
    cache.write_ref("os/next", Repo.open(origin).read_ref("os/next") or "")
    assert refresh_summary(cache)
    assert _top(cache_path) == _top(origin)
    # A ref moving past the listed commit: the set promises what is not held, so it goes.
    cache.write_ref("os/next", stable)
    assert refresh_summary(cache)
    assert not (cache_path / "summary.sig").exists()


def test_a_subsummary_that_does_not_match_its_name_is_refused() -> None:
    raw = build_summary([], last_modified=1)
    digest = hashlib.sha256(raw).hexdigest()
    assert upstream_summary.subsummary(gzip.compress(raw), digest).refs == []
    with pytest.raises(UpstreamError, match="does not match its name"):
        upstream_summary.subsummary(gzip.compress(raw + b"\0"), digest)
    index = gvariant.encode(
        upstream_summary.INDEX_SIGNATURE, ({"x86_64": (bytes.fromhex(digest), [], {})}, {})
    )
    files = {"summary": raw, "summary.idx": index, f"summaries/{digest}.gz": gzip.compress(b"tampered")}

    async def fetch(path: str) -> bytes | None:
        return files.get(path)

    with pytest.raises(UpstreamError):
        asyncio.run(upstream_summary.fetch_set(fetch, "http://origin.invalid/"))


def test_flatpak_refs_are_refs_to_follow_and_pull(tmp_path: Path) -> None:
    refs = ["app/org.example.App/x86_64/stable", "runtime/org.example.Platform/x86_64/1"]
    refs += ["appstream/x86_64", "appstream2/x86_64"]
    path = tmp_path / "lanshare.toml"
    path.write_text(f"[origin]\nrefs = {refs!r}\n".replace("'", '"'))
    assert list(load_config(path, {"LANSHARE_STATE_DIR": str(tmp_path)}).origin.refs) == refs
    for ref in refs:
        assert validate_ref(ref) == ref


def test_an_unsigned_set_is_served_only_when_it_lists_every_ref_held(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    stable = _commit(origin, build_tree(tmp_path / "tree"))
    extra = {"xa.title": Variant("s", "Origin")}
    repo = Repo.open(origin)
    entry = SummaryRef("os/stable", stable, len(repo.read_metadata_bytes(stable, ObjectType.COMMIT)))
    (origin / "summary").write_bytes(build_summary([entry], extra_metadata=extra))
    upstream = _set_of(origin, "http://origin.invalid/")
    assert not upstream.signed

    cache_path = tmp_path / "cache"
    cache = _cache_holding_stable(cache_path, origin, stable, upstream)
    assert _top(cache_path) == _top(origin)
    # A ref from elsewhere: stock `ostree pull` only finds refs the summary lists, so the cache
    # now serves its own summary, with the upstream's additional metadata.
    cache.write_ref("os/local", stable)
    assert refresh_summary(cache)
    served = parse_summary((cache_path / "summary").read_bytes())
    assert [r.name for r in served.refs] == ["os/local", "os/stable"]
    assert served.extra_metadata == extra


def test_a_torn_or_foreign_signature_is_not_kept(tmp_path: Path, gpg_keys: GpgKeys) -> None:
    origin = tmp_path / "origin"
    _commit(origin, build_tree(tmp_path / "tree"))
    sign: list[str | Path] = ["--gpg-sign", gpg_keys.trusted.key_id, "--gpg-homedir", gpg_keys.homedir]
    assert lanshare("summary", "--repo", origin, "-u", *sign) == 0
    good = _set_of(origin, "http://origin.invalid/")
    upstream_summary.check_signatures(good, gpg_keys.trusted.keyring, ())
    with pytest.raises(UpstreamError, match=r"summary\.sig"):
        upstream_summary.check_signatures(good, gpg_keys.other.keyring, ())
    # A new summary next to the old signature (fetched while the publisher rewrote them).
    torn = SummarySet(good.key, {**good.files, "summary": build_summary([], last_modified=2)}, good.source)
    with pytest.raises(UpstreamError, match=r"summary\.sig"):
        upstream_summary.check_signatures(torn, gpg_keys.trusted.keyring, ())
