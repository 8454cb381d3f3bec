"""Shard listing, DALI index parsing, ranged sample reads and the per-rank epoch plan (no decoding)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataloading.schema import shard_name
from dataloading.shards import BadSample, EpochPlan, SampleRef, Shard, ShardReader, list_shards, parse_index
from dataloading.shardwriter import ShardWriter


def _members(key: str) -> dict[str, bytes]:
    return {"mp4": f"video of {key}".encode() * 50, "flac": f"audio of {key}".encode() * 70, "json": b"{}"}


def _write(root: Path, sizes: list[int]) -> list[list[str]]:
    keys = []
    for index, count in enumerate(sizes):
        with ShardWriter() as writer:
            for i in range(count):
                writer.add(f"s{index}_{i}", _members(f"s{index}_{i}"))
            writer.publish(str(root / shard_name(index)))
        keys.append(list(writer.keys))
    return keys


def test_listing_and_ranged_reads_match_the_written_members(tmp_path: Path) -> None:
    keys = _write(tmp_path, [2, 3])
    shards = list_shards(str(tmp_path))
    assert [s.samples for s in shards] == [2, 3]
    assert shards[1].index_url.endswith("shard-000001.idx")
    reader = ShardReader(shards)
    for s, shard_keys in enumerate(keys):
        for i, key in enumerate(shard_keys):
            got_key, members = reader.read(SampleRef(s, i))
            assert got_key == key
            assert members == _members(key)


def test_manifest_counts_are_used_when_present(tmp_path: Path) -> None:
    _write(tmp_path, [2, 3])
    manifest = {"shards": {shard_name(0): {"samples": 2}, shard_name(1): {"samples": 3}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "shard-000001.idx").unlink()  # the manifest alone says how many samples there are
    assert [s.samples for s in list_shards(str(tmp_path))] == [2, 3]


def test_nothing_to_read_fails_with_the_url(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing")):
        list_shards(str(tmp_path / "missing"))
    (tmp_path / "x.tar").write_bytes(b"")  # a tar without an index is not a shard
    with pytest.raises(FileNotFoundError, match="no readable shards"):
        list_shards(str(tmp_path))


def test_truncated_shard_and_damaged_index_raise_bad_sample(tmp_path: Path) -> None:
    _write(tmp_path, [3, 2])
    tar = tmp_path / "shard-000000.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    (tmp_path / "shard-000001.idx").write_text("garbage\n")
    reader = ShardReader([Shard(str(tar), 3), Shard(str(tmp_path / "shard-000001.tar"), 2)])
    assert reader.read(SampleRef(0, 0))[0] == "s0_0"
    with pytest.raises(BadSample, match="truncated") as info:
        reader.read(SampleRef(0, 2))
    assert info.value.truncated and info.value.key == "s0_2"
    with pytest.raises(BadSample, match="unreadable index"):
        reader.read(SampleRef(1, 0))


def test_parse_index_rejects_malformed_lines() -> None:
    assert parse_index("v1.2 1\njson 512 2 a.json\n")[0].key == "a"
    for bad in ("", "v1.2 2\njson 512 2 a.json\n", "v1.2 1\njson 512 2\n"):
        with pytest.raises(ValueError):
            parse_index(bad)


def _shares(sizes: list[int], batch: int, world: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    shards = [Shard(f"s{i}.tar", n) for i, n in enumerate(sizes)]
    plans = [EpochPlan(shards, batch, rank, world, seed, epoch) for rank in range(world)]
    assert len({p.batches for p in plans}) == 1
    return [[(p[i].shard, p[i].index) for i in range(p.batches * batch)] for p in plans]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=7),
    batch=st.integers(1, 4),
    world=st.integers(1, 4),
    seed=st.integers(0, 3),
    epoch=st.integers(0, 3),
)
def test_every_rank_gets_the_same_count_of_distinct_samples(
    sizes: list[int], batch: int, world: int, seed: int, epoch: int
) -> None:
    total = sum(sizes)
    if total < batch * world:
        with pytest.raises(ValueError, match="cannot fill one batch"):
            _shares(sizes, batch, world, seed, epoch)
        return
    shares = _shares(sizes, batch, world, seed, epoch)
    seen = [ref for share in shares for ref in share]
    assert len(seen) == len(set(seen)) == total // (batch * world) * batch * world
    assert all(0 <= i < sizes[s] for s, i in seen)
    if total % (batch * world) == 0:
        assert len(seen) == total  # every sample exactly once


def test_shuffle_depends_on_seed_and_epoch_only() -> None:
    sizes = [7, 3, 9, 5, 4]
    assert _shares(sizes, 2, 2, 0, 1) == _shares(sizes, 2, 2, 0, 1)
    assert _shares(sizes, 2, 2, 0, 1) != _shares(sizes, 2, 2, 0, 2)
    assert _shares(sizes, 2, 2, 0, 1) != _shares(sizes, 2, 2, 1, 1)


def test_positions_past_the_share_wrap_around_it() -> None:
    plan = EpochPlan([Shard("a.tar", 5), Shard("b.tar", 6)], 2, 1, 2, 0, 0)
    share = [plan[i] for i in range(plan.quota)]
    assert [plan[plan.quota + i] for i in range(plan.quota)] == share


def test_resampled_draws_uniformly_from_the_whole_dataset() -> None:
    shards = [Shard("a.tar", 2), Shard("b.tar", 6)]
    plan = EpochPlan(shards, 2, 0, 1, 0, 0, resampled=True)
    assert plan.batches == 4
    counts = Counter((plan[i].shard, plan[i].index) for i in range(4000))
    assert set(counts) == {(0, 0), (0, 1), *((1, i) for i in range(6))}
    assert np.std(list(counts.values())) < 60  # ~500 each
    again = EpochPlan(shards, 2, 0, 1, 0, 0, resampled=True)
    assert [again[i] for i in range(50)] == [plan[i] for i in range(50)]
