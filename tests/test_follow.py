"""Following a ref through its checkpoint chain, with a source that lies about history."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lanshare.follow import Follower
from lanshare.ostree.objects import ObjectType
from lanshare.ostree.repo import Repo
from lanshare.pull import PlanEntry, PullOptions, SourceSpec, TrustPolicy
from tests.fleet import Chain, holds_chain, publish_chain, static_origin
from tests.gpg_fixtures import GpgKeys


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, gpg_keys: GpgKeys) -> Chain:
    return publish_chain(tmp_path_factory.mktemp("publish"), gpg_keys)


def _hostile_copy(chain: Chain, where: Path) -> Path:
    """The chain with v3's signature stripped and v1's commit object corrupted."""
    copy = Path(shutil.copytree(chain.repo, where))
    repo = Repo.open(copy)
    repo.object_path(chain.commits["v3"], ObjectType.COMMIT_META).unlink()
    v1 = repo.object_path(chain.commits["v1"], ObjectType.COMMIT)
    data = bytearray(v1.read_bytes())
    data[-1] ^= 1
    v1.write_bytes(bytes(data))
    return copy


@pytest.mark.asyncio
async def test_history_a_source_cannot_prove_is_refused_and_another_source_fills_in(
    tmp_path: Path, chain: Chain
) -> None:
    options = PullOptions(trust=TrustPolicy(gpg_keyring=chain.keyring))
    hostile = _hostile_copy(chain, tmp_path / "hostile")
    repo = Repo.init(tmp_path / "cache")
    async with static_origin(hostile) as bad_url:
        plan: list[PlanEntry] = [SourceSpec(bad_url, "archive", "hostile")]
        report = await Follower(repo, lambda: plan, options).follow(["os/stable"])
        # The heads and the checkpoints it could prove came in; the walk stopped at v3, which
        # nobody could show signed, and stored nothing for it.
        assert repo.read_ref("os/stable") == chain.commits["v4"]
        assert repo.read_ref("os/stable-v2") == chain.commits["v5"]
        assert not repo.has_object(chain.commits["v3"], ObjectType.COMMIT)
        assert not repo.is_partial(chain.commits["v3"])
        assert not holds_chain(repo, chain) and chain.commits["v2"] not in report.pulled

        async with static_origin(chain.repo) as good_url:
            plan.append(SourceSpec(good_url, "archive", "origin"))
            report = await Follower(repo, lambda: plan, options).follow(["os/stable"])
    assert holds_chain(repo, chain), report
    # The rest of the history came from the honest source, signed; the corrupt v1 never entered.
    assert set(report.commit_only) == {chain.commits[v] for v in ("v1", "v2", "v3")}
    assert report.pulled == [chain.commits["v2"]]  # the checkpoint, in full
    for commit in (chain.commits["v1"], chain.commits["v3"]):
        assert repo.is_partial(commit) and repo.has_object(commit, ObjectType.COMMIT_META)
        repo.load_commit(commit)  # verifies its checksum
