"""The training loader end to end on tiny real shards (VP9 256×128 clips, 4-channel FLAC, JSON, DALI index).

Every test decodes with DALI on CPU; crops are 32×32, 4 frames, 16 mels, so the module runs in about a
minute on 2 cores.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import get_args

import numpy as np
import psutil
import pytest
import torch
import torch.nn.functional as F

from dataloading.config import DataConfig, Feature, PreprocessConfig, StorageConfig
from dataloading.dali_pipeline import SampleDecoder, trim_window
from dataloading.features import DB_PER_UNIT, FeatureSettings
from dataloading.foa import direction_vector, steering_matrix
from dataloading.geometry import crop_views, stacked_remap_maps, unstack_remapped, wrap_pad
from dataloading.loader import Loader, build_loader
from dataloading.shards import SampleRef, ShardReader, list_shards, parse_index
from dataloading.synth.samples import write_dataset
from tests.distributed import run_distributed
from tests.helpers import synth_videos

SIZES = [3, 5, 4, 2, 6]  # five uneven shards, 20 clips: 5 batches of 2 on each of 2 ranks


def small(url: str, **overrides: object) -> DataConfig:
    """The test-sized loader config: 2 clips × 4 viewpoints, 4 frames of 32×32, 16 mels, in-process."""
    settings = dict(
        url=url, batch_size=2, frames=4, crop_size=32, n_mels=16, workers=0, viewpoint_sampler="mix"
    )
    return DataConfig(**(settings | overrides))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    root = tmp_path_factory.mktemp("shards")
    return str(root), write_dataset(str(root), SIZES, seconds=1.5)


def _epoch(rank: int, world_size: int, url: str) -> tuple[list[list[str]], int]:
    loader = build_loader(small(url, workers=2), rank, world_size, epoch=3)
    return [batch.meta["key"] for batch in loader], len(loader)


def test_two_ranks_two_workers_see_every_sample_once(dataset: tuple[str, list[str]]) -> None:
    url, keys = dataset
    (keys0, len0), (keys1, len1) = run_distributed(_epoch, 2, url, timeout_s=240)
    assert len(keys0) == len(keys1) == len0 == len1 == 5
    seen = [key for batch in keys0 + keys1 for key in batch]
    assert sorted(seen) == sorted(keys)


def _run(loader: Loader, count: int | None = None) -> list[tuple[list[str], torch.Tensor, torch.Tensor]]:
    out = []
    for batch in loader:
        out.append((batch.meta["key"], batch.video, batch.audio))
        if count is not None and len(out) == count:
            break
    return out


def test_resume_mid_epoch_continues_with_the_same_batches(dataset: tuple[str, list[str]]) -> None:
    url, _ = dataset
    full = _run(build_loader(small(url, workers=2), epoch=1))
    first = build_loader(small(url, workers=2), epoch=1)
    head = _run(first, 3)
    state = first.state_dict()
    resumed = build_loader(small(url, workers=1))  # another worker count: the stream does not depend on it
    resumed.load_state_dict([state])
    tail = _run(resumed)
    assert len(full) == len(head) + len(tail) == 10
    for (keys, video, audio), (keys_r, video_r, audio_r) in zip(full, head + tail, strict=True):
        assert keys == keys_r
        torch.testing.assert_close(video, video_r, rtol=0, atol=0)
        torch.testing.assert_close(audio, audio_r, rtol=0, atol=0)
    assert resumed.counters["samples"] == 20
    assert list(resumed) == []  # the epoch is over until set_epoch moves on
    resumed.set_epoch(2)
    assert len(_run(resumed, 1)) == 1


def test_one_pool_of_workers_serves_every_epoch_and_resume(dataset: tuple[str, list[str]]) -> None:
    """The worker processes started by the first epoch read the later ones (and an abandoned epoch's
    rest after a resume), and what they read is what a new loader reads."""
    url, _ = dataset
    loader = build_loader(small(url, workers=2), epoch=0)
    _run(loader, 2)  # abandoned mid-epoch
    workers = {p.pid for p in psutil.Process().children()}
    assert len(workers) >= 2
    loader.set_epoch(1)
    second = _run(loader)
    state = loader.state_dict()
    loader.set_epoch(2)
    third = _run(loader, 3)
    assert {p.pid for p in psutil.Process().children()} == workers
    for got, fresh in (
        (second, _run(build_loader(small(url), epoch=1))),
        (third, _run(build_loader(small(url), epoch=2), 3)),
    ):
        assert [keys for keys, _, _ in got] == [keys for keys, _, _ in fresh]
        for (_, video, audio), (_, video_f, audio_f) in zip(got, fresh, strict=True):
            torch.testing.assert_close(video, video_f, rtol=0, atol=0)
            torch.testing.assert_close(audio, audio_f, rtol=0, atol=0)
    loader.load_state_dict([state])  # back to the end of epoch 1: nothing left
    assert list(loader) == []


def _keys(loader: Loader, count: int | None = None) -> list[str]:
    return [key for keys, _, _ in _run(loader, count) for key in keys]


def test_resume_on_one_and_three_ranks_reads_every_remaining_sample_once(
    dataset: tuple[str, list[str]],
) -> None:
    """20 samples, batches of 2: 2 ranks read 2 batches each (8 samples), then the other 12 are read by
    1 rank (6 batches) or 3 ranks (2 batches each); then 3 ranks stop after 1 batch and 1 rank goes on."""
    url, keys = dataset
    cfg = small(url)
    pair = [build_loader(cfg, rank, 2, epoch=1) for rank in range(2)]
    head = [key for loader in pair for key in _keys(loader, 2)]
    saved = [loader.state_dict() for loader in pair]
    for world in (1, 3):
        ranks = [build_loader(cfg, rank, world) for rank in range(world)]
        for loader in ranks:
            loader.load_state_dict(saved)
        assert {loader.batches_left() for loader in ranks} == {12 // (2 * world)}
        rest = [key for loader in ranks for key in _keys(loader)]
        assert sorted(head + rest) == sorted(keys)  # every sample of the epoch, each once
        assert sum(loader.counters["samples"] for loader in ranks) == 20  # the ranks' counters add up
    three = [build_loader(cfg, rank, 3) for rank in range(3)]
    for loader in three:
        loader.load_state_dict(saved)
    middle = [key for loader in three for key in _keys(loader, 1)]
    one = build_loader(cfg)
    one.load_state_dict([loader.state_dict() for loader in three])
    assert sorted(head + middle + _keys(one)) == sorted(keys)
    with pytest.raises(ValueError, match=r"data\.seed 0 and 20 samples, this run has data\.seed 1"):
        build_loader(small(url, seed=1)).load_state_dict(saved)


@pytest.mark.parametrize("feature", sorted(get_args(Feature)))
def test_shapes_dtypes_and_ranges(dataset: tuple[str, list[str]], feature: str) -> None:
    url, _ = dataset
    cfg = small(url, feature=feature)
    batch = next(iter(build_loader(cfg)))
    b, k = cfg.batch_size, cfg.viewpoints
    assert batch.video.shape == (b, k, 3, cfg.frames, cfg.crop_size, cfg.crop_size)
    assert batch.audio.shape == (
        b,
        k,
        FeatureSettings(feature=feature).channels,
        cfg.n_mels,
        101,
    )  # 1 s at 100 frames/s, centred
    assert batch.directions.shape == (b, k, 2)
    for tensor in (batch.video, batch.audio, batch.directions):
        assert tensor.dtype == torch.float32 and tensor.isfinite().all()
    assert batch.video.min() >= 0.0 and batch.video.max() <= 1.0 and batch.video.std() > 0.05
    assert batch.directions[..., 1].abs().max() <= math.radians(cfg.max_elevation_deg) + 1e-6
    logmel = batch.audio[
        :, :, : {"stereo": 2}.get(feature, min(FeatureSettings(feature=feature).channels, 4))
    ]
    spread = (logmel.amax((2, 3, 4)) - logmel.amin((2, 3, 4))) * DB_PER_UNIT  # dB
    assert (spread <= cfg.top_db + 1e-3).all() and (spread > 1.0).all()
    if feature == "stereo":  # GCC-PHAT is a normalised correlation
        assert batch.audio[:, :, 2].abs().max() <= 1.0 + 1e-5
    low, high = np.radians(cfg.fov_deg)
    assert ((batch.meta["fov"] >= low - 1e-6) & (batch.meta["fov"] <= high + 1e-6)).all()


OBJECT = (2.9, 0.25)  # near the ±180° seam, a little up
SOUND = (1.1, -0.35)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("scene")
    write_dataset(str(root), [4], seconds=1.5, seed=5, object_direction=OBJECT, sound_direction=SOUND)
    return str(root)


def test_crop_aimed_at_the_object_shows_it(scene: str) -> None:
    """The objects sampler aims viewpoint 0 at the red patch; its crop centre is red, flipped or not."""
    for augment in (False, True):
        loader = build_loader(small(scene, viewpoint_sampler="objects", flip_prob=0.5), augment=augment)
        batches = list(loader)
        flipped = torch.cat([b.meta["flipped"] for b in batches])
        assert augment or not flipped.any()
        for batch in batches:
            for b in range(batch.video.shape[0]):
                sign = -1.0 if batch.meta["flipped"][b] else 1.0
                torch.testing.assert_close(
                    batch.directions[b, 0],
                    torch.tensor([sign * OBJECT[0], OBJECT[1]]),
                    atol=3e-4,
                    rtol=0,  # JSON keeps 0.01°
                )
                centre = batch.video[b, 0, :, :, 12:20, 12:20].mean((1, 2, 3))  # RGB
                # Red, if darker where colour jitter dimmed a wide crop (fov 69°: 0.57).
                assert centre[0] > 0.5 and centre[1] < 0.35 and centre[2] < 0.35, centre
                other = batch.video[b, 1:, :, :, 12:20, 12:20].mean((0, 2, 3, 4))
                assert other[0] < 0.5  # viewpoints elsewhere do not see the patch


def _iv_direction(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Direction of the mean mel-pooled intensity vector (channels 4-6: Y, Z, X) of ``[..., 7, F, T]``."""
    i_y, i_z, i_x = features[..., 4:7, :, :].mean((-2, -1)).unbind(-1)
    return torch.atan2(i_y, i_x), torch.atan2(i_z, torch.hypot(i_x, i_y))


def test_steered_audio_points_where_each_viewpoint_says(scene: str) -> None:
    """With every augmentation on, the intensity DOA of each viewpoint's features is the source direction
    seen from that viewpoint (mirrored for flipped clips), and the audio sampler's first view faces it."""
    for sampler in ("random", "audio"):
        cfg = small(scene, feature="logmel_iv", viewpoint_sampler=sampler, flip_prob=0.5)
        for batch in build_loader(cfg):
            az, el = batch.directions.unbind(-1)
            sign = torch.where(batch.meta["flipped"], -1.0, 1.0)[:, None]
            source = direction_vector(sign * SOUND[0], torch.full_like(az, SOUND[1]))  # [B, K, 3]
            rotation = steering_matrix(az, el)[..., [3, 1, 2], :][..., [3, 1, 2]]
            x, y, z = (rotation @ source.unsqueeze(-1)).squeeze(-1).unbind(-1)
            doa_az, doa_el = _iv_direction(batch.audio)
            az_error = torch.remainder(doa_az - torch.atan2(y, x) + math.pi, 2 * math.pi) - math.pi
            assert az_error.abs().max() < math.radians(3.0), az_error
            assert (doa_el - torch.atan2(z, torch.hypot(x, y))).abs().max() < math.radians(3.0)
            if sampler == "audio":  # steered toward the sound peak, the sound arrives from the front
                assert doa_az[:, 0].abs().max() < math.radians(5.0) and doa_el[
                    :, 0
                ].abs().max() < math.radians(5.0)


def test_negative_control_steers_each_views_audio_away_from_where_its_video_looks(scene: str) -> None:
    """The audio sampler aims view 0's video at the sound; with the control's yaw offset (90°–270°) the
    same view's audio is steered away from it, flipped or not, while the directions still name the video's."""
    cfg = small(scene, feature="logmel_iv", viewpoint_sampler="audio", flip_prob=0.5)
    control = small(scene, feature="logmel_iv", viewpoint_sampler="audio", audio_yaw_offset_deg=(90.0, 270.0))
    for plain, moved in zip(build_loader(cfg), build_loader(control), strict=True):
        torch.testing.assert_close(plain.directions, moved.directions, rtol=0, atol=0)  # videos unchanged
        torch.testing.assert_close(plain.video, moved.video, rtol=0, atol=0)
        az, el = _iv_direction(moved.audio[:, 0])
        off_front = torch.rad2deg(torch.acos(torch.cos(az) * torch.cos(el)))
        assert (off_front > 80).all(), off_front  # ≥ 90° of yaw away, less the elevation's share
        az0, el0 = _iv_direction(plain.audio[:, 0])
        assert (torch.rad2deg(torch.acos(torch.cos(az0) * torch.cos(el0))) < 5).all()


def test_trimmed_window_decodes_to_the_same_frames(dataset: tuple[str, list[str]]) -> None:
    url, _ = dataset
    _, members = ShardReader(list_shards(url)).read(SampleRef(1, 2))
    decoder = SampleDecoder(24000, 4, video=True, max_batch=1)
    for start, stride in ((0, 1), (9, 1), (13, 2), (22, 1)):  # 24-frame clips, keyframe every 8
        mp4, offset = trim_window(members["mp4"], start, 4, stride, 16.0)
        assert len(mp4) < len(members["mp4"]) or start < 8
        whole = decoder.decode([members["flac"]], [(0, 10)], [members["mp4"]], [(start, stride)])[0]
        part = decoder.decode([members["flac"]], [(0, 10)], [mp4], [(offset, stride)])[0]
        assert isinstance(whole, tuple) and isinstance(part, tuple)
        np.testing.assert_array_equal(whole[1], part[1])


def _damage(root: Path) -> tuple[set[str], set[str], str]:
    """Corrupt one clip's video and another's JSON in shard 0 (in place, sizes kept) and cut shard 2 short.

    Returns the damaged keys, the keys lost to the truncation and the truncated shard's URL.
    """
    tar = root / "shard-000000.tar"
    entries = parse_index((root / "shard-000000.idx").read_text())
    data = bytearray(tar.read_bytes())
    offset, size = entries[1].members["mp4"]
    data[offset : offset + size] = bytes(size)
    offset, size = entries[2].members["json"]
    data[offset : offset + size] = b"{" * size
    tar.write_bytes(bytes(data))
    cut = root / "shard-000002.tar"
    cut_entries = parse_index((root / "shard-000002.idx").read_text())
    cut.write_bytes(cut.read_bytes()[: cut_entries[2].span[0] + 100])
    return {entries[1].key, entries[2].key}, {cut_entries[2].key, cut_entries[3].key}, str(cut)


def test_bad_samples_and_a_truncated_shard_are_counted_logged_once_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys = write_dataset(str(tmp_path), [4, 4, 4], seconds=1.5, seed=2)
    damaged, lost, truncated = _damage(tmp_path)
    caplog.set_level(logging.WARNING, logger="dataloading.loader")
    loader = build_loader(small(str(tmp_path), workers=2))
    delivered = [key for batch in loader for key in batch.meta["key"]]
    assert len(delivered) == 12 == len(loader) * 2  # the batch count holds: bad clips were replaced
    assert set(delivered) == set(keys) - damaged - lost
    assert loader.counters["skipped"] >= 4 and loader.counters["truncated_shards"] == 1
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages  # once per damaged sample, once for the truncated shard
    for key in damaged:
        assert sum(key in m and "shard-000000.tar" in m for m in messages) == 1
    assert sum(truncated in m and any(k in m for k in lost) for m in messages) == 1


def test_an_unreadable_dataset_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    write_dataset(str(tmp_path), [3], seconds=1.5)
    tar = tmp_path / "shard-000000.tar"
    data = bytearray(tar.read_bytes())
    for entry in parse_index((tmp_path / "shard-000000.idx").read_text()):
        offset, size = entry.members["mp4"]
        data[offset : offset + size] = bytes(size)
    tar.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=r"looks unreadable.*unreadable video"):
        next(iter(build_loader(small(str(tmp_path), batch_size=1))))
    with pytest.raises(FileNotFoundError, match="no readable shards"):
        build_loader(small(str(tmp_path / "elsewhere")))


def test_reads_what_preprocessing_writes(tmp_path: Path) -> None:
    """The contract with `avsa preprocess`: its shards (written here by its worker, without Ray) load."""
    from cluster.preprocess import PreprocessWorker, list_inputs, plan_shards

    synth_videos(tmp_path / "raw", videos=2, seconds=2.5)
    raw, out = str(tmp_path / "raw"), str(tmp_path / "out")
    prep = PreprocessConfig(input=raw, output=out, clip_seconds=1.2, shard_size=2, video_size=(256, 128))
    worker = PreprocessWorker(prep, StorageConfig())
    probes = {url: worker.probe(url) for url in list_inputs(prep.input)}
    for plan in plan_shards(probes, prep.clip_seconds, prep.shard_size):  # type: ignore[arg-type]
        assert worker.make_shard(plan, probes, prep.output, None).status == "written"  # type: ignore[arg-type]
    loader = build_loader(small(prep.output, feature="logmel_iv"))
    keys = [key for batch in loader for key in batch.meta["key"]]
    assert len(keys) == len(set(keys)) == 4 and loader.counters["skipped"] == 0


def test_resampled_mode_yields_the_requested_batches(dataset: tuple[str, list[str]]) -> None:
    url, keys = dataset
    loader = build_loader(small(url, resampled=True), batches_per_epoch=3)
    seen = [key for batch in loader for key in batch.meta["key"]]
    assert len(seen) == 6 and set(seen) <= set(keys)


@pytest.mark.integration
def test_s3_dataset_on_seaweedfs(stack, dataset: tuple[str, list[str]]) -> None:  # type: ignore[no-untyped-def]
    storage = stack.storage()
    url = f"s3://{stack.cfg.bucket}/loader-test"
    keys = write_dataset(url, [3, 3], seconds=1.5, storage=storage)
    assert [s.samples for s in list_shards(url, storage)] == [3, 3]
    loader = build_loader(small(url, workers=2), storage=storage)
    seen = [key for batch in loader for key in batch.meta["key"]]
    assert sorted(seen) == sorted(keys)


def test_stacked_remap_maps_give_the_cpu_crops() -> None:
    """The GPU path's layout, checked on CPU: K maps stacked along the height, a remap (emulated by
    grid_sample on the wrap-padded frames, pixel corners at integers as in DALI) and the unstacking
    give crop_views' crops."""
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (3, 32, 64, 3), dtype=np.uint8))  # [T, H, W, 3]
    azimuth, elevation = torch.tensor([0.3, 3.1, -2.0]), torch.tensor([0.0, 0.4, -0.5])
    fov = torch.tensor([0.6, 1.2, 0.9])
    mapx, mapy = (torch.from_numpy(m) for m in stacked_remap_maps(azimuth, elevation, fov, 8, (64, 32)))
    assert mapx.shape == (3 * 8, 8)
    padded = wrap_pad(frames.permute(0, 3, 1, 2).float(), 1)  # [T, 3, H, W + 2]
    grid = torch.stack((2.0 * mapx / padded.shape[-1] - 1.0, 2.0 * mapy / padded.shape[-2] - 1.0), -1)
    remapped = F.grid_sample(padded, grid.expand(3, -1, -1, -1), align_corners=False, padding_mode="border")
    views = unstack_remapped(remapped.permute(0, 2, 3, 1), 3)  # DALI's [T, K·h, w, 3] -> [K, 3, T, h, w]
    torch.testing.assert_close(views / 255.0, crop_views(frames.numpy(), azimuth, elevation, fov, 8))


@pytest.mark.gpu
def test_gpu_mixed_decode_and_remap_match_the_cpu_path(dataset: tuple[str, list[str]]) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    url, _ = dataset
    cfg = small(url)
    cpu = _run(build_loader(cfg, device="cpu", augment=False), 3)
    gpu = _run(build_loader(cfg, device="cuda", augment=False), 3)
    for (keys, video, audio), (keys_g, video_g, audio_g) in zip(cpu, gpu, strict=True):
        assert keys == keys_g and video_g.is_cuda
        assert (video_g.cpu() - video).abs().mean() < 4.0 / 255.0  # the decoders convert YUV differently
        torch.testing.assert_close(audio_g.cpu(), audio, atol=1e-3, rtol=1e-3)
