"""The shard plan: every clip once, in order, in the fewest shards of near-equal size."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from cluster.preprocess import plan_shards
from dataloading.transcode import Probe


def probe_of(url: str, clips: int) -> Probe:
    return Probe(url, url, float(clips), 512, 256, 16.0, 48000, "ambix", 16)


@given(st.lists(st.integers(1, 40), min_size=1, max_size=6), st.integers(1, 64))
def test_shards_hold_every_clip_in_order_in_the_fewest_near_equal_shards(
    counts: list[int], size: int
) -> None:
    probes = {f"in/{k}.mp4": probe_of(f"in/{k}.mp4", n) for k, n in enumerate(counts)}
    plans = plan_shards(probes, 1.0, size)
    assert [c for p in plans for c in p.clips] == [
        (u, i) for u in sorted(probes) for i in range(counts[int(u[3:-4])])
    ]
    sizes = [len(p.clips) for p in plans]
    assert len(plans) == math.ceil(sum(counts) / size)
    assert max(sizes) <= size and max(sizes) - min(sizes) <= 1
    assert [p.name for p in plans] == sorted(p.name for p in plans)


def test_twelve_clips_at_eight_per_shard_make_two_shards_of_six() -> None:
    plans = plan_shards({"a.mp4": probe_of("a.mp4", 12)}, 1.0, 8)
    assert [len(p.clips) for p in plans] == [6, 6]
    assert plan_shards({}, 1.0, 8) == []  # every input rejected
