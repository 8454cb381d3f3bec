"""The epoch plan: one global order per epoch, global consumption, and resumes on any world size."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataloading.epoch import SHUFFLE_BLOCK, EpochOrder, EpochPlan, Interval, complement, count, normalize
from dataloading.shards import Shard

Ref = tuple[int, int]


def _shards(sizes: list[int]) -> list[Shard]:
    return [Shard(f"s{i}.tar", n) for i, n in enumerate(sizes)]


def _plans(
    sizes: list[int], batch: int, world: int, consumed: Sequence[Interval] = (), seed: int = 0, epoch: int = 0
) -> list[EpochPlan]:
    return [EpochPlan(_shards(sizes), batch, r, world, seed, epoch, consumed=consumed) for r in range(world)]


def _shares(plans: list[EpochPlan]) -> list[list[Ref]]:
    return [[(p[i].shard, p[i].index) for i in range(p.batches * p.batch_size)] for p in plans]


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
            _plans(sizes, batch, world, seed=seed, epoch=epoch)
        return
    plans = _plans(sizes, batch, world, seed=seed, epoch=epoch)
    assert len({p.batches for p in plans}) == 1
    seen = [ref for share in _shares(plans) for ref in share]
    assert len(seen) == len(set(seen)) == total // (batch * world) * batch * world
    assert all(0 <= i < sizes[s] for s, i in seen)
    if total % (batch * world) == 0:
        assert len(seen) == total  # every sample exactly once


def test_the_order_depends_on_seed_and_epoch_and_not_on_the_world_size() -> None:
    shards = _shards([7, 3, 9, 5, 4])
    order = [EpochOrder(shards, 0, 1)[i] for i in range(28)]
    assert sorted((r.shard, r.index) for r in order) == [
        (s, i) for s, n in enumerate([7, 3, 9, 5, 4]) for i in range(n)
    ]
    assert order != [EpochOrder(shards, 0, 2)[i] for i in range(28)]
    assert order != [EpochOrder(shards, 1, 1)[i] for i in range(28)]
    # Step by step the ranks take consecutive runs of the order, whatever their number.
    for world in (1, 2, 4):
        plans = _plans([7, 3, 9, 5, 4], 2, world, epoch=1)
        step_major = [
            plans[r][2 * s + j] for s in range(plans[0].batches) for r in range(world) for j in range(2)
        ]
        assert step_major == order[: len(step_major)]


def test_a_block_shuffle_mixes_shards_within_a_batch() -> None:
    """Shards of 64 samples (of a few source videos each): a batch of 16 draws from several shards."""
    order = EpochOrder(_shards([64] * 40), seed=0, epoch=0)
    assert len({order[i].shard for i in range(16)}) >= 8
    assert len({order[i].shard for i in range(SHUFFLE_BLOCK)}) == SHUFFLE_BLOCK // 64  # one block


def test_intervals_merge_and_complement() -> None:
    assert normalize([(5, 7), (0, 2), (2, 3), (6, 9), (4, 4)]) == [(0, 3), (5, 9)]
    assert complement([(0, 3), (5, 9)], 12) == [(3, 5), (9, 12)]
    assert complement([], 4) == [(0, 4)] and complement([(0, 4)], 4) == []
    assert count([(0, 3), (5, 9)]) == 7


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    batch=st.integers(1, 3),
    worlds=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    data=st.data(),
)
def test_resuming_on_any_world_sizes_reads_every_remaining_sample_once(
    sizes: list[int], batch: int, worlds: list[int], data: st.DataObject
) -> None:
    """Segments on a chain of world sizes, each stopped after some steps, with some ranks having read
    ahead (bad samples): what the segments read and what the last one reads to the end of the epoch is
    each sample at most once, and everything but a last partial global batch."""
    total = sum(sizes)
    if total < batch * worlds[0]:
        return
    consumed: list[Interval] = []
    read: list[Ref] = []  # every primary (non-substitute) sample any rank read
    for n, world in enumerate(worlds):
        if not consumed and total < batch * world:
            return  # a fresh epoch that cannot fill one global batch is an error (first test)
        plans = _plans(sizes, batch, world, consumed)
        last = n == len(worlds) - 1
        steps = plans[0].batches if last else data.draw(st.integers(0, plans[0].batches))
        extra = (
            [0] * world if last else data.draw(st.lists(st.integers(0, 2), min_size=world, max_size=world))
        )
        positions = [steps * batch + e for e in extra]
        for plan, position in zip(plans, positions, strict=True):
            read += [(plan[p].shard, plan[p].index) for p in range(position) if plan.identity(p)[1] == 0]
        consumed = plans[0].consumed_after(positions)
        assert count(consumed) == len(read)
    assert len(read) == len(set(read))
    assert total - len(read) < batch * worlds[-1]  # only a last partial global batch is left out


def test_substitutes_cycle_the_order_and_count_as_nothing_consumed() -> None:
    plan = EpochPlan(_shards([5, 6]), 2, 1, 2, 0, 0)  # 11 samples: 2 batches of 2 on 2 ranks
    share = plan.batches * plan.batch_size
    assert [plan.identity(share + i) for i in range(4)] == [(2, 1), (3, 1), (6, 1), (7, 1)]
    assert plan.consumed_after([share, share + 4]) == [(0, 8)]


def test_a_samples_randomness_follows_its_identity_not_the_rank() -> None:
    sizes = [6, 6]
    one, (zero, other) = _plans(sizes, 2, 1)[0], _plans(sizes, 2, 2)
    # Order index 2 is position 2 on one rank, position 0 of rank 1 on two.
    assert one.identity(2) == other.identity(0) == (2, 0)
    assert one.sample_rng(2).integers(2**62) == other.sample_rng(0).integers(2**62)
    assert zero.sample_rng(0).integers(2**62) != other.sample_rng(0).integers(2**62)


def test_resampled_draws_uniformly_from_the_whole_dataset() -> None:
    shards = _shards([2, 6])
    plan = EpochPlan(shards, 2, 0, 1, 0, 0, resampled=True)
    assert plan.batches == 4 and plan.consumed_after([9]) == []
    counts = Counter((plan[i].shard, plan[i].index) for i in range(4000))
    assert set(counts) == {(0, 0), (0, 1), *((1, i) for i in range(6))}
    assert np.std(list(counts.values())) < 60  # ~500 each
    again = EpochPlan(shards, 2, 0, 1, 0, 0, resampled=True)
    assert [again[i] for i in range(50)] == [plan[i] for i in range(50)]
    resumed = EpochPlan(shards, 2, 0, 1, 0, 0, resampled=True, segment=3)  # a resume draws on anew
    assert [resumed[i] for i in range(50)] != [plan[i] for i in range(50)]
