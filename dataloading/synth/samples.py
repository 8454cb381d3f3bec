"""Synthetic training samples written straight into shards, without preprocessing: an equirect
colour field with one red patch (the sample's detected object) and FOA noise from a chosen direction.

Tests and benchmarks of the loader use them where a real preprocessed dataset would be slower to make
and harder to control (the patch and the sound directions are known exactly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import av
import numpy as np
import torch

from dataloading.config import PreprocessConfig, StorageConfig
from dataloading.foa import encode_plane_wave
from dataloading.schema import AudioStream, DetectedObject, SampleMeta, VideoStream, direction_deg, shard_name
from dataloading.shardwriter import ShardWriter
from dataloading.transcode import Mp4Writer, flac_bytes

PATCH_RADIUS = 0.2  # radians: the red patch of a synthetic sample (its detected object)


def patch_mask(height: int, width: int, azimuth: float, elevation: float, radius: float) -> np.ndarray:
    """Pixels ``[H, W]`` of an equirect frame within ``radius`` (radians) of a direction."""
    az = (1.0 - 2.0 * (np.arange(width) + 0.5) / width) * math.pi
    el = (1.0 - 2.0 * (np.arange(height) + 0.5) / height) * math.pi / 2.0
    cos_d = np.sin(el)[:, None] * math.sin(elevation) + np.cos(el)[:, None] * math.cos(elevation) * np.cos(
        az[None] - azimuth
    )
    return cos_d >= math.cos(radius)


def sample_mp4(frames: np.ndarray, fps: int, gop: int = 8) -> bytes:
    """RGB frames ``[N, H, W, 3]`` uint8 as VP9 in mp4, keyframe every ``gop`` frames (the sample format),
    at crf 20: finer than preprocessing's :data:`dataloading.transcode.VPX_CRF`, as these samples
    always were."""
    height, width = frames.shape[1:3]
    writer = Mp4Writer(PreprocessConfig(video_size=(width, height), fps=fps, codec="vp9", gop=gop), crf=20)
    for image in frames:
        writer.add(av.VideoFrame.from_ndarray(image, format="rgb24"))
    return writer.finish()


def synthetic_sample(
    key: str,
    rng: np.random.Generator,
    seconds: float,
    size: tuple[int, int] = (256, 128),
    fps: int = 16,
    rate: int = 24000,
    object_direction: tuple[float, float] | None = None,
    sound_direction: tuple[float, float] | None = None,
) -> dict[str, bytes]:
    """One sample's members (``mp4``, ``flac``, ``json``): a moving colour field with a red patch at
    ``object_direction`` and FOA noise arriving from ``sound_direction`` (radians; random when None)."""
    width, height = size
    obj_az, obj_el = object_direction or (rng.uniform(-math.pi, math.pi), rng.uniform(-0.4, 0.4))
    snd_az, snd_el = sound_direction or (obj_az, obj_el)
    n = round(seconds * fps)
    x = np.linspace(0.0, 2.0 * math.pi, width, endpoint=False)
    y = np.linspace(0.0, math.pi, height)
    frames = np.empty((n, height, width, 3), np.uint8)
    patch = patch_mask(height, width, obj_az, obj_el, PATCH_RADIUS)
    for t in range(n):
        phase = t / fps
        frames[t, ..., 1] = (100 + 60 * np.sin(x[None] + phase) * np.cos(y[:, None])).astype(np.uint8)
        frames[t, ..., 2] = (120 + 60 * np.cos(2 * y[:, None] - phase) + 0 * x[None]).astype(np.uint8)
        frames[t, ..., 0] = 40
        frames[t][patch] = (250, 20, 20)
    source = torch.from_numpy(rng.standard_normal(round(seconds * rate))).float() * 0.2
    foa = encode_plane_wave(source, snd_az, snd_el).numpy()
    foa += 0.005 * rng.standard_normal(foa.shape)  # a little diffuse noise, as in any recording
    patch_object = DetectedObject(
        "patch",
        1.0,
        direction_deg(obj_az, obj_el),
        round(math.degrees(2 * PATCH_RADIUS), 2),
        0.0,
        "synthetic",
    )
    meta = SampleMeta(
        key=key,
        source=f"synthetic://{key}",
        start_s=0.0,
        duration_s=seconds,
        fps=fps,
        video=VideoStream(width, height, "vp9"),
        audio=AudioStream(rate, "ambix"),
        objects=(patch_object,),
        detector="synthetic",
    )
    return {"mp4": sample_mp4(frames, fps), "flac": flac_bytes(foa, rate), "json": meta.to_json()}


def write_dataset(
    url: str,
    shard_sizes: Sequence[int],
    seconds: float = 2.0,
    size: tuple[int, int] = (256, 128),
    seed: int = 0,
    storage: StorageConfig | None = None,
    **sample_kwargs: object,
) -> list[str]:
    """Write shards of synthetic samples (``shard_sizes`` samples each) with their DALI indexes to ``url``.

    No manifest is written (the loader then counts samples from the indexes). Returns the keys in order.
    """
    rng = np.random.default_rng(seed)
    keys = []
    for index, count in enumerate(shard_sizes):
        with ShardWriter() as writer:
            for i in range(count):
                key = f"clip{index:03d}_{i:03d}"
                writer.add(key, synthetic_sample(key, rng, seconds, size, **sample_kwargs))  # type: ignore[arg-type]
                keys.append(key)
            writer.publish(f"{url.rstrip('/')}/{shard_name(index)}", storage)
    return keys
