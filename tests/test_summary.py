"""The summary file against ``ostree summary -u`` / ``--view`` (libostree 2022.7)."""

from __future__ import annotations

import configparser
import hashlib
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lanshare import gvariant
from lanshare.errors import CorruptObject
from lanshare.gvariant import Variant, swap64
from lanshare.ostree.summary import (
    KEY_COLLECTION_MAP,
    Summary,
    SummaryRef,
    build_summary,
    glib_dict_order,
    parse_summary,
)

pytestmark = pytest.mark.needs("ostree")

T_STABLE = 1_600_000_000
T_BETA = 1_650_000_000


def ostree(*args: str | Path) -> str:
    """Run the ostree CLI (the oracle) and return its stdout."""
    proc = subprocess.run(["ostree", *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, f"ostree {' '.join(map(str, args))}: {proc.stderr}"
    return proc.stdout


def iso(timestamp: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def make_repo(tmp_path: Path, collection_id: str | None = None) -> Path:
    """A repo with os/stable (two commits, versioned) and os/beta, made by the ostree CLI."""
    repo = tmp_path / "repo"
    ostree(
        "init",
        f"--repo={repo}",
        "--mode=archive",
        *([f"--collection-id={collection_id}"] if collection_id else []),
    )
    tree = tmp_path / "tree"
    (tree / "usr").mkdir(parents=True)
    (tree / "usr" / "file").write_text("one\n")

    def commit(branch: str, timestamp: int, *extra: str) -> str:
        args = [
            f"--repo={repo}",
            f"--branch={branch}",
            f"--timestamp={iso(timestamp)}",
            "--subject=s",
            *extra,
        ]
        return ostree("commit", *args, str(tree)).strip()

    commit("os/stable", T_STABLE - 100, "--add-metadata-string=version=0.9")
    (tree / "usr" / "file").write_text("two\n")
    commit("os/stable", T_STABLE, "--add-metadata-string=version=1.0")
    commit("os/beta", T_BETA)
    return repo


def add_mirror(repo: Path, collection_id: str, ref: str, checksum: str) -> None:
    path = repo / "refs" / "mirrors" / collection_id / ref
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(checksum + "\n")


def rev_parse(repo: Path, ref: str) -> str:
    return ostree("rev-parse", f"--repo={repo}", ref).strip()


@dataclass
class RepoInputs:
    """What libostree reads to write a summary, gathered from the files (not from any summary)."""

    collection_id: str | None
    refs: list[SummaryRef]
    collection_map: dict[str, list[SummaryRef]] = field(default_factory=dict)
    static_deltas: dict[str, bytes] = field(default_factory=dict)


def summary_ref(repo: Path, name: str, checksum: str) -> SummaryRef:
    """A ref entry from the .commit object itself: its size, its (BE) timestamp and its version."""
    data = (repo / "objects" / checksum[:2] / f"{checksum[2:]}.commit").read_bytes()
    metadata, *_, timestamp, _, _ = gvariant.decode("(a{sv}aya(say)sstayay)", data)
    version = metadata.get("version")
    return SummaryRef(name, checksum, len(data), swap64(timestamp), version.value if version else None)


def repo_inputs(repo: Path) -> RepoInputs:
    config = configparser.ConfigParser()
    config.read(repo / "config")
    collection_id = config.get("core", "collection-id", fallback=None)
    inputs = RepoInputs(collection_id, [])
    for root, into_main in ((repo / "refs" / "heads", True), (repo / "refs" / "mirrors", False)):
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            cid, name = rel.split("/", 1) if not into_main else (collection_id, rel)
            entry = summary_ref(repo, name, path.read_text().strip())
            if into_main or cid == collection_id:
                inputs.refs.append(entry)
            else:
                assert cid is not None
                inputs.collection_map.setdefault(cid, []).append(entry)
    for superblock in (repo / "deltas").rglob("superblock"):
        names = ostree("static-delta", "list", f"--repo={repo}").split()
        assert len(names) == 1, "one delta at a time keeps the name lookup simple"
        inputs.static_deltas[names[0]] = hashlib.sha256(superblock.read_bytes()).digest()
    return inputs


def rebuild(repo: Path, extra_metadata: dict[str, Variant] | None = None) -> bytes:
    """lanshare's summary for ``repo``, with ostree's last-modified (the only input not in the repo)."""
    last_modified = parse_summary((repo / "summary").read_bytes()).last_modified
    inputs = repo_inputs(repo)
    return build_summary(
        inputs.refs,
        last_modified=last_modified,
        collection_id=inputs.collection_id,
        collection_map=inputs.collection_map,
        static_deltas=inputs.static_deltas,
        extra_metadata=extra_metadata,
    )


# --- reading ostree's summaries --------------------------------------------------------------------


def test_parse_ostree_summary(tmp_path: Path) -> None:
    """Refs, commit sizes, timestamps, versions and repository metadata come out as ostree wrote them."""
    repo = make_repo(tmp_path)
    before = int(time.time())
    ostree("summary", f"--repo={repo}", "-u")
    summary = parse_summary((repo / "summary").read_bytes())

    assert [r.name for r in summary.refs] == ["os/beta", "os/stable"]
    stable = summary.ref("os/stable")
    assert stable is not None and stable.checksum == rev_parse(repo, "os/stable")
    commit_file = repo / "objects" / stable.checksum[:2] / f"{stable.checksum[2:]}.commit"
    assert stable.commit_size == commit_file.stat().st_size  # little-endian, unlike the timestamps
    assert (stable.timestamp, stable.version) == (T_STABLE, "1.0")
    beta = summary.ref("os/beta")
    assert beta is not None and (beta.timestamp, beta.version) == (T_BETA, None)
    assert (
        summary.mode == "archive-z2" and summary.tombstone_commits is False and summary.indexed_deltas is True
    )
    assert summary.last_modified is not None and before - 1 <= summary.last_modified <= time.time() + 1
    assert summary.collection_id is None and summary.collection_map == {} and summary.extra_metadata == {}


def test_collection_id_layout(tmp_path: Path) -> None:
    """With a collection id, the repo's own collection (heads and own mirrors) is the main list."""
    # Other collections' mirrors go to ostree.summary.collection-map.  ``ostree summary -u`` also
    # creates an ostree-metadata ref in the main list; lanshare does not make one (see summary.py).
    repo = make_repo(tmp_path, "org.example.Os")
    stable = rev_parse(repo, "os/stable")
    add_mirror(repo, "org.example.Os", "mirrored/own", stable)
    add_mirror(repo, "org.other.Apps", "app/one", stable)
    add_mirror(repo, "org.another.Coll", "x", stable)
    ostree("summary", f"--repo={repo}", "-u")
    summary = parse_summary((repo / "summary").read_bytes())

    assert summary.collection_id == "org.example.Os"
    assert [r.name for r in summary.refs] == ["mirrored/own", "os/beta", "os/stable", "ostree-metadata"]
    assert {cid: [r.name for r in refs] for cid, refs in summary.collection_map.items()} == {
        "org.another.Coll": ["x"],
        "org.other.Apps": ["app/one"],
    }
    app = summary.ref("app/one", "org.other.Apps")
    assert app is not None and (app.checksum, app.timestamp) == (stable, T_STABLE)
    assert summary.ref("app/one") is None


def test_mirrors_without_collection_id_go_to_the_collection_map(tmp_path: Path) -> None:
    """Without a collection id, only refs/heads is the main list (refs/remotes is left out)."""
    repo = make_repo(tmp_path)
    stable = rev_parse(repo, "os/stable")
    add_mirror(repo, "org.other.Apps", "app/one", stable)
    remote_ref = repo / "refs" / "remotes" / "origin" / "os" / "x"
    remote_ref.parent.mkdir(parents=True)
    remote_ref.write_text(stable + "\n")
    ostree("summary", f"--repo={repo}", "-u")
    summary = parse_summary((repo / "summary").read_bytes())
    assert [r.name for r in summary.refs] == ["os/beta", "os/stable"]
    assert list(summary.collection_map) == ["org.other.Apps"]
    assert (repo / "summary").read_bytes() == rebuild(repo)


# --- writing byte-identical summaries ---------------------------------------------------------------


def test_build_is_byte_identical_to_ostree(tmp_path: Path) -> None:
    """Same refs and last-modified in, same bytes out as ``ostree summary -u``."""
    repo = make_repo(tmp_path)
    ostree("summary", f"--repo={repo}", "-u")
    assert (repo / "summary").read_bytes() == rebuild(repo)


def test_build_is_byte_identical_with_collections(tmp_path: Path) -> None:
    """Byte-identical with a collection id, own and foreign mirrors (and ostree's ostree-metadata ref)."""
    repo = make_repo(tmp_path, "org.example.Os")
    stable = rev_parse(repo, "os/stable")
    add_mirror(repo, "org.example.Os", "mirrored/own", stable)
    add_mirror(repo, "org.other.Apps", "app/one", stable)
    add_mirror(repo, "org.other.Apps", "app/two", rev_parse(repo, "os/beta"))
    add_mirror(repo, "org.another.Coll", "x", stable)
    ostree("summary", f"--repo={repo}", "-u")
    assert (repo / "summary").read_bytes() == rebuild(repo)


def test_build_is_byte_identical_with_deltas_and_extra_metadata(tmp_path: Path) -> None:
    """Byte-identical with a static delta and ``-m`` metadata, across GLib hash-table growths."""
    # libostree fills both a{sv} dictionaries through a GLib hash table, so the on-disk key order is
    # the table's slot order; lanshare replays the table (hash, probing, in-place growth).  From 3
    # extra keys on the table grows, where a naive rehash would already give another order.
    repo = make_repo(tmp_path)
    ostree("static-delta", "generate", f"--repo={repo}", "os/stable")
    for count in (0, 3, 11, 13, 25):
        keys = [f"org.example.key{i}" for i in range(count)]
        if count:  # a key libostree sets itself, and a repeated key: both keep their first slot
            keys += ["ostree.summary.mode", keys[count // 2], "a"]
        extra = {key: Variant("s", f"value of {key}") for key in keys}
        ostree(
            "summary", f"--repo={repo}", "-u", *[arg for k in keys for arg in ("-m", f"{k}='value of {k}'")]
        )
        summary = parse_summary((repo / "summary").read_bytes())
        assert len(summary.static_deltas) == 1
        assert summary.mode == "archive-z2"  # libostree overrides a -m of a key it sets
        assert len(summary.extra_metadata) == len(set(keys) - {"ostree.summary.mode"})
        assert (repo / "summary").read_bytes() == rebuild(repo, extra), f"with {count} extra keys"


def test_glib_dict_order_matches_observed_layouts() -> None:
    """The two per-ref keys come out version first, whatever the insertion order (as ostree writes them)."""
    assert glib_dict_order(["ostree.commit.timestamp", "ostree.commit.version"]) == [
        "ostree.commit.version",
        "ostree.commit.timestamp",
    ]
    assert glib_dict_order(["b", "a", "b"]) == glib_dict_order(["b", "a"])
    many = [f"k{i}" for i in range(200)]
    assert sorted(glib_dict_order(many)) == sorted(many)


# --- ostree reading lanshare's summaries ------------------------------------------------------------

VIEW_REF = re.compile(r"^\* (?:\((?P<cid>[^,]+), )?(?P<name>[^)\s]+)\)?$")


def view_refs(repo: Path) -> dict[tuple[str | None, str], tuple[str, int, str | None]]:
    """Parse ``ostree summary --view``: (collection, ref) -> (checksum, commit size, version)."""
    refs: dict[tuple[str | None, str], tuple[str, int, str | None]] = {}
    lines = ostree("summary", f"--repo={repo}", "--view").splitlines()
    for i, line in enumerate(lines):
        match = VIEW_REF.match(line)
        if not match:
            continue
        latest = re.search(r"Latest Commit \((\d+) bytes\)", lines[i + 1])
        assert latest is not None, lines[i + 1]
        size = int(latest.group(1))
        version = next(
            (v.split(": ", 1)[1] for v in lines[i + 3 : i + 5] if v.strip().startswith("Version")), None
        )
        refs[(match["cid"], match["name"])] = (lines[i + 2].strip(), size, version)
    return refs


def test_ostree_reads_lanshare_summary(tmp_path: Path) -> None:
    """A lanshare summary dropped into a repo shows the same refs, checksums, sizes and versions."""
    repo = make_repo(tmp_path, "org.example.Os")
    inputs = repo_inputs(repo)
    other = [SummaryRef("app/one", "ab" * 32, 321, timestamp=T_BETA, version="2.0")]
    data = build_summary(
        inputs.refs,
        last_modified=T_BETA + 5,
        collection_id="org.example.Os",
        collection_map={"org.other.Apps": other},
        extra_metadata={"lanshare.node": Variant("s", "node-1")},
    )
    (repo / "summary").write_bytes(data)

    expected = {("org.example.Os", r.name): (r.checksum, r.commit_size, r.version) for r in inputs.refs}
    expected[("org.other.Apps", "app/one")] = ("ab" * 32, 321, "2.0")
    assert view_refs(repo) == expected
    assert expected[("org.example.Os", "os/stable")][2] == "1.0"
    view = ostree("summary", f"--repo={repo}", "--view")
    assert f"Last-Modified (ostree.summary.last-modified): {iso(T_BETA + 5)[:-1]}+00" in view
    assert "Collection ID (ostree.summary.collection-id): org.example.Os" in view
    assert "lanshare.node: 'node-1'" in view

    parsed = parse_summary(data)
    assert parsed.refs == sorted(inputs.refs, key=lambda r: r.name)
    assert parsed.collection_map == {"org.other.Apps": other}
    assert parsed.extra_metadata == {"lanshare.node": Variant("s", "node-1")}


def test_build_rejects_bad_input() -> None:
    """Bad checksums, duplicate refs and the repo's own collection in the map are caller errors."""
    good = SummaryRef("a", "00" * 32, 10)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        build_summary([SummaryRef("a", "AB" * 32, 10)])
    with pytest.raises(ValueError, match="listed twice"):
        build_summary([good, good])
    with pytest.raises(ValueError, match="belong in the main list"):
        build_summary([], collection_id="org.x", collection_map={"org.x": [good]})
    empty = parse_summary(build_summary([], last_modified=5))
    assert (empty.refs, empty.collection_map, empty.last_modified) == ([], {}, 5)


# --- corrupt summaries --------------------------------------------------------------------------------


def corrupt_variants(data: bytes) -> list[bytes]:
    """Every truncation and every single-bit flip of ``data``."""
    out = [data[:n] for n in range(len(data))]
    for i in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            out.append(bytes(flipped))
    return out


def test_corrupt_summaries_raise_corrupt_object(tmp_path: Path) -> None:
    """Truncated or mangled summaries raise CorruptObject("summary", ...), never anything else."""
    repo = make_repo(tmp_path, "org.example.Os")
    add_mirror(repo, "org.other.Apps", "app/one", rev_parse(repo, "os/stable"))
    ostree("summary", f"--repo={repo}", "-u")
    data = (repo / "summary").read_bytes()

    for bad in (b"", data[:-1], data[: len(data) // 2], data[:-1] + b"\xff", b"\x00" * 7):
        with pytest.raises(CorruptObject) as info:
            parse_summary(bad)
        assert info.value.name == "summary"
    # the refs array's last framing offset (just before the outer tuple's own offset) pointing past the end
    outer_width = 2 if len(data) > 0xFF else 1
    refs_end = int.from_bytes(data[-outer_width:], "little")
    width = 2 if refs_end > 0xFF else 1
    mangled = bytearray(data)
    mangled[refs_end - width : refs_end] = (0xFFFF).to_bytes(2, "little")[:width]
    with pytest.raises(CorruptObject, match="summary: not a valid summary"):
        parse_summary(bytes(mangled))

    outcomes = {"parsed": 0, "corrupt": 0}
    for bad in corrupt_variants(data):
        try:
            parse_summary(bad)
        except CorruptObject as e:
            assert e.name == "summary"
            outcomes["corrupt"] += 1
        else:
            outcomes["parsed"] += 1  # e.g. a flipped bit inside a ref name or a checksum
    assert outcomes["corrupt"] > len(data)


def _summary_with(metadata: dict[str, Variant], ref_metadata: dict[str, Variant] | None = None) -> bytes:
    entry = ("os/stable", (100, b"\x01" * 32, ref_metadata or {}))
    return gvariant.encode("(a(s(taya{sv}))a{sv})", ([entry], metadata))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_summary_with({}, {"ostree.commit.timestamp": Variant("s", "yesterday")}), "has type s, expected t"),
        (_summary_with({"ostree.summary.collection-id": Variant("u", 1)}), "collection-id has type u"),
        (_summary_with({KEY_COLLECTION_MAP: Variant("as", ["x"])}), "collection-map has type as"),
        (
            _summary_with({"ostree.static-deltas": Variant("a{sv}", {"d": Variant("ay", b"short")})}),
            "32-byte",
        ),
        (gvariant.encode("(a(s(taya{sv}))a{sv})", ([("r", (1, b"\x01" * 31, {}))], {})), "31-byte checksum"),
        (gvariant.encode("(a(s(taya{sv}))a{sv})", ([("r", (1, b"\x01" * 32, {}))] * 2, {})), "listed twice"),
    ],
)
def test_well_formed_but_wrong_summaries(data: bytes, reason: str) -> None:
    """Valid GVariant with wrong types or sizes inside is still a corrupt summary, with the reason."""
    with pytest.raises(CorruptObject, match=reason):
        parse_summary(data)


def test_summary_dataclass_lookup() -> None:
    """``Summary.ref`` finds refs in the main list or, by collection id, in the collection map."""
    ref = SummaryRef("x", "00" * 32, 1)
    summary = Summary(refs=[ref], collection_map={"org.o": [ref]}, collection_id="org.me")
    assert summary.ref("x") is ref and summary.ref("x", "org.me") is ref and summary.ref("x", "org.o") is ref
    assert summary.ref("y") is None and summary.ref("x", "org.none") is None
