"""Shard listing, DALI index parsing and ranged sample reads (no decoding)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dataloading.schema import Manifest, ShardEntry, shard_name
from dataloading.shards import BadSample, SampleRef, Shard, ShardReader, list_shards, parse_index
from dataloading.shardwriter import ShardWriter
from tests.helpers import PREPROCESS_SETTINGS


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
    shards = {
        shard_name(k): ShardEntry(samples=n, bytes=0, sha256="", idx_bytes=0) for k, n in ((0, 2), (1, 3))
    }
    (tmp_path / "manifest.json").write_bytes(Manifest(PREPROCESS_SETTINGS, shards).to_json())
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
