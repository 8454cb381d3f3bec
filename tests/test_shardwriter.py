"""Shard writer: tar layout, the DALI index DALI actually reads, checksums, atomic publish."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile

import av
import numpy as np
import pytest

from dataloading.config import PreprocessConfig
from dataloading.schema import EXTENSIONS
from dataloading.shardwriter import ShardWriter, dali_index, sha256_file, sha256_url
from dataloading.storage import TEMP_MARK
from dataloading.transcode import Mp4Writer, flac_bytes
from tests.helpers import dali_read

CFG = PreprocessConfig(video_size=(64, 32), fps=16, gop=8, clip_seconds=1.0)


def tiny_sample(seed: int) -> dict[str, bytes]:
    """A real VP9 mp4 (16 frames), a 4-channel 24 kHz FLAC and a JSON document."""
    rng = np.random.default_rng(seed)
    writer = Mp4Writer(CFG)
    for _ in range(16):
        rgb = rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)
        writer.add(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p"))
    audio = (0.1 * rng.standard_normal((4, 2400))).astype(np.float32)
    return {
        "mp4": writer.finish(),
        "flac": flac_bytes(audio, 24000),
        "json": json.dumps({"s": seed}).encode(),
    }


def write_shard(stem: str, n: int) -> list[str]:
    keys = [f"clip{i:03d}" for i in range(n)]
    with ShardWriter() as writer:
        for i, key in enumerate(keys):
            writer.add(key, tiny_sample(i))
        info = writer.publish(stem)
    assert info.samples == n and info.keys == keys
    return keys


def test_tar_lists_every_member_in_sample_order_and_index_points_at_the_bytes(tmp_path) -> None:
    stem = str(tmp_path / "shard-000000")
    keys = write_shard(stem, 3)
    listing = subprocess.run(["tar", "tf", f"{stem}.tar"], capture_output=True, text=True, check=True)
    assert listing.stdout.split() == [f"{k}.{e}" for k in keys for e in EXTENSIONS]
    lines = (tmp_path / "shard-000000.idx").read_text().splitlines()
    assert lines[0] == "v1.2 3"
    raw = (tmp_path / "shard-000000.tar").read_bytes()
    with tarfile.open(f"{stem}.tar") as tar:
        for key, line in zip(keys, lines[1:], strict=True):
            fields = line.split()
            assert len(fields) == 4 * len(EXTENSIONS)
            for k, ext in enumerate(EXTENSIONS):
                name, offset, size, filename = (
                    fields[4 * k],
                    int(fields[4 * k + 1]),
                    int(fields[4 * k + 2]),
                    fields[4 * k + 3],
                )
                assert (name, filename) == (ext, f"{key}.{ext}")
                assert raw[offset : offset + size] == tar.extractfile(filename).read()
    assert dali_index(f"{stem}.tar") == (tmp_path / "shard-000000.idx").read_text()


def test_checksum_recorded_matches_the_published_object_and_no_temp_is_left(tmp_path) -> None:
    stem = str(tmp_path / "s")
    with ShardWriter() as writer:
        writer.add("a", tiny_sample(0))
        info = writer.publish(stem)
        local = writer.path
    assert sha256_url(f"{stem}.tar") == info.sha256 == sha256_file(f"{stem}.tar")
    assert sha256_url(str(tmp_path / "missing.tar")) is None
    assert not any(TEMP_MARK in p.name for p in tmp_path.iterdir())
    assert not os.path.exists(local)


def test_bad_samples_are_refused(tmp_path) -> None:
    with ShardWriter() as writer:
        writer.add("a", tiny_sample(0))
        with pytest.raises(ValueError, match="duplicate"):
            writer.add("a", tiny_sample(1))
        with pytest.raises(ValueError, match="must not contain"):
            writer.add("a.b", tiny_sample(1))
        with pytest.raises(ValueError, match="lacks"):
            writer.add("c", {"mp4": b"x"})


def test_dali_reads_the_shard_through_its_index_and_decodes_video_and_audio(tmp_path) -> None:
    pytest.importorskip("nvidia.dali")
    stem = str(tmp_path / "shard-000000")
    write_shard(stem, 3)
    batches = dali_read([f"{stem}.tar"], [f"{stem}.idx"], batch_size=3)
    video, audio, rate, meta = batches[0]
    assert [v.shape for v in video] == [(8, 32, 64, 3)] * 3
    assert [a.shape for a in audio] == [(2400, 4)] * 3
    assert rate == [24000.0] * 3
    assert sorted(json.loads(m)["s"] for m in meta) == [0, 1, 2]


def test_tar_bytes_depend_only_on_the_samples(tmp_path) -> None:
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    samples = [tiny_sample(i) for i in range(2)]
    for stem in (a, b):
        with ShardWriter() as writer:
            for i, sample in enumerate(samples):
                writer.add(f"k{i}", sample)
            writer.publish(stem)
    assert sha256_file(f"{a}.tar") == sha256_file(f"{b}.tar")
    with tarfile.open(f"{a}.tar") as tar:
        assert all(m.mtime == 0 for m in tar.getmembers())
    assert (tmp_path / "a.idx").read_bytes() == (tmp_path / "b.idx").read_bytes()
