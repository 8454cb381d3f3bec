"""The shard plan: every clip once, in order, in the fewest shards of near-equal size; what a resumed
run may skip of the manifest it finds."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cluster.preprocess import PreprocessError, plan_shards, previous_manifest, resumable_shards
from dataloading.config import StorageConfig
from dataloading.schema import MANIFEST_NAME
from dataloading.transcode import Probe
from tests.helpers import PREPROCESS_SETTINGS, sample_manifest


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


def test_a_resumed_run_skips_shards_of_its_own_schema_only(tmp_path: Path) -> None:
    """This version's manifest: its shards may be skipped. A version 1 manifest (no settings.layout)
    migrates, settings and all, but its shards hold version 1 samples: every one is made again."""
    current = sample_manifest()
    (tmp_path / MANIFEST_NAME).write_bytes(current.to_json())
    previous = previous_manifest(str(tmp_path), StorageConfig())
    assert previous == current and resumable_shards(previous, str(tmp_path)) == current.shards

    old = current.to_dict() | {"schema_version": 1}
    del old["settings"]["layout"]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(old))
    migrated = previous_manifest(str(tmp_path), StorageConfig())
    assert migrated is not None and migrated.settings == replace(PREPROCESS_SETTINGS, layout="files")
    assert resumable_shards(migrated, str(tmp_path)) == {}
    assert resumable_shards(None, str(tmp_path)) == {}


def test_a_resumed_run_refuses_a_newer_dataset_and_rewrites_an_unversioned_one(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(sample_manifest().to_dict() | {"schema_version": 99}))
    with pytest.raises(
        PreprocessError, match=r"schema_version 99, newer than this avsa's .*another --output"
    ):
        previous_manifest(str(tmp_path), StorageConfig())
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"shards": {}, "inputs": {}}))
    assert previous_manifest(str(tmp_path), StorageConfig()) is None  # nothing to resume: all made anew
