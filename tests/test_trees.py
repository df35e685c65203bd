"""A commit's directory metadata in one request (``POST /lanshare/v1/trees``), honest and hostile."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from lanshare import wire
from lanshare.index.models import Peer
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.server import trees
from lanshare.server.lan import create_lan_app
from lanshare.server.limits import LanLimits
from tests import hostile_servers as hs
from tests import test_pull
from tests.publisher import Published
from tests.test_pull import Client

# The pull tests' fixtures: the signed publisher, a fresh client, nginx.
published, client, nginx = test_pull.published, test_pull.client, test_pull.nginx

METADATA = (ObjectType.DIR_TREE, ObjectType.DIR_META)


def _tree_metadata(repo: Repo, commit: str) -> set[tuple[str, ObjectType]]:
    return {(c, k) for c, k in repo.iter_closure(commit) if k in METADATA}


class _Recorded:
    """What a real LAN server was asked for: batch names, and trees records sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batch_names: list[wire.ObjectName] = []
        self.tree_records: list[wire.ObjectName] = []
        parse = wire.parse_request
        walk = trees.TreeEncoder._walk

        def parse_request(body: object) -> list[wire.ObjectName]:
            names = parse(body)
            self.batch_names += names
            return names

        def recorded_walk(encoder: trees.TreeEncoder) -> Iterator[bytes]:
            for record in walk(encoder):
                # A record starts with its kind's code and the raw checksum (lanshare.wire).
                self.tree_records.append(wire.ObjectName(record[1:33].hex(), wire._CODE_KINDS[record[0]]))
                yield record

        monkeypatch.setattr(wire, "parse_request", parse_request)
        monkeypatch.setattr(trees.TreeEncoder, "_walk", recorded_walk)

    def metadata_batched(self) -> list[wire.ObjectName]:
        return [n for n in self.batch_names if n.kind in METADATA]


def test_a_pull_from_a_lanshare_peer_gets_the_whole_tree_in_one_request(
    client: Client, published: Published, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer_repo = Repo.open(published.repo)
    recorded = _Recorded(monkeypatch)
    with hs.ServerThread(create_lan_app(peer_repo, LanLimits(), "publisher-node")) as server:
        result = client.pull(server.url)
    assert result.commit == published.v2
    client.assert_clean(published.v2)
    wanted = _tree_metadata(peer_repo, published.v2)
    # Every dirtree and dirmeta came in the trees response, each once; no batch asked for one.
    assert sorted((n.checksum, n.kind) for n in recorded.tree_records) == sorted(wanted)
    assert recorded.metadata_batched() == []


def test_an_update_is_sent_only_the_directories_that_changed(
    client: Client, published: Published, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer_repo = Repo.open(published.repo)
    app = create_lan_app(peer_repo, LanLimits(), "publisher-node")
    with hs.ServerThread(app) as server:
        assert client.pull(server.url, target=published.v1, ref="os/stable").commit == published.v1
        recorded = _Recorded(monkeypatch)
        assert client.pull(server.url).commit == published.v2
    client.assert_clean(published.v2)
    new = _tree_metadata(peer_repo, published.v2) - _tree_metadata(peer_repo, published.v1)
    sent = {(n.checksum, n.kind) for n in recorded.tree_records}
    assert new and sent == new  # v1's directories (the client's base) were left out
    assert recorded.metadata_batched() == []


@pytest.mark.parametrize(
    ("how", "reason"),
    [("extra", "not part of the tree asked for"), ("forged", "does not hash to its name")],
)
def test_a_peer_lying_in_a_trees_response_is_demoted_and_the_pull_completes(
    client: Client, published: Published, nginx: Callable[[Path], str], how: str, reason: str
) -> None:
    honest = nginx(published.repo)
    peer = hs.FakePeer(Repo.open(published.repo), node_id="tree-liar", trees=how)
    with peer.serve() as server:
        result = client.pull(server.url, honest)
    assert peer.trees_requests == 1
    assert result.commit == published.v2 and reason in result.abandoned[f"tree-liar ({server.url})"]
    client.assert_clean(published.v2)
    # Nothing outside the tree was kept: every object here belongs to v2's closure.
    closure = set(client.repo.iter_closure(published.v2))
    assert {(c, k) for c, k, _ in client.repo.iter_objects() if k is not ObjectType.COMMIT_META} <= closure
    with Session(client.index) as session:
        row = session.get(Peer, "tree-liar")
        assert row is not None and not row.healthy and row.failures == 1
        assert row.backoff_until is not None and row.backoff_until.timestamp() > time.time()


def test_an_honest_fake_peer_serves_trees_then_batches(client: Client, published: Published) -> None:
    """The protocol as another implementation would speak it (tests/hostile_servers.FakePeer)."""
    peer = hs.FakePeer(Repo.open(published.repo), node_id="honest-peer", trees="honest")
    with peer.serve() as server:
        result = client.pull(server.url)
    assert peer.trees_requests == 1 and result.abandoned == {}
    client.assert_clean(published.v2)


def _stream(*records: bytes, end: bool = True) -> bytes:
    body = wire.MAGIC + b"".join(records) + (bytes([wire.END]) if end else b"")
    return wire.compressor().compress(body)


@pytest.mark.parametrize(
    ("records", "end", "error"),
    [
        ((("root", wire.ABSENT),), True, "says .* is absent"),
        ((("stranger", wire.PRESENT),), True, "not part of the tree"),
        ((("root", wire.PRESENT),), False, "ended early"),
    ],
)
def test_the_trees_decoder_refuses_what_a_tree_response_cannot_carry(
    records: tuple[tuple[str, int], ...], end: bool, error: str
) -> None:
    root = wire.ObjectName("ab" * 32, ObjectType.DIR_META)
    names = {"root": root, "stranger": wire.ObjectName("cd" * 32, ObjectType.DIR_META)}
    encoded = [
        wire.encode_record(names[which], None, status)
        if status != wire.PRESENT
        else wire.encode_record(names[which], b"x")
        for which, status in records
    ]
    decoder = wire.TreeDecoder([root], lambda name, data: [])
    with pytest.raises(wire.WireError, match=error):
        decoder.feed(_stream(*encoded, end=end))
        decoder.finish()


def test_the_trees_decoder_bounds_the_records_a_liar_can_send(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "MAX_TREE_RECORDS", 3)
    root = wire.ObjectName("ab" * 32, ObjectType.DIR_META)
    decoder = wire.TreeDecoder([root], lambda name, data: [])
    with pytest.raises(wire.WireError, match="more than 3 records"):
        decoder.feed(_stream(*[wire.encode_record(root, b"x")] * 4))
