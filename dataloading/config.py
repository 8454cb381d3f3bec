"""Config sections owned by the data side: storage, preprocessing (sample format) and loading.

Pure data: defaults follow the NeurIPS 2020 reference configs (see shared/REFERENCE.md).
The root of the tree is :class:`trainer.config.Config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class StorageConfig:
    """Object-storage access. ``None`` falls back to the standard AWS environment variables
    (``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_DEFAULT_REGION``)."""

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    region: str | None = None


@dataclass
class PreprocessConfig:
    """Raw 360° videos -> WebDataset shards (the training sample format)."""

    input: str = ".avsa/demo/raw"
    # How --input is read: "files" takes every video under it (audio in the video or a sidecar beside
    # it); "starss23" and "yt360" read the published tree of that dataset, pairing video, audio and
    # labels by stem (dataloading.layouts) and adding labels/split to each clip's JSON.
    layout: Literal["files", "starss23", "yt360"] = "files"
    output: str = ".avsa/demo/shards"
    clip_seconds: float = 10.0
    shard_size: int = 64  # most samples (clips) per tar shard; shards are cut equal, give or take one
    video_size: tuple[int, int] = (512, 256)  # equirect width, height in pixels (2:1)
    fps: int = 16
    codec: Literal["vp9", "vp8", "mjpeg"] = "vp9"  # DALI's CPU decoder has no H.264
    gop: int = 8  # frames between keyframes: short, so random access in a clip is cheap
    audio_rate: int = 24000  # Hz
    input_format: Literal["auto", "ambix", "fuma"] = "auto"
    detector: str = "builtin"  # "builtin", "none" or "onnx:PATH"
    workers: int = 0  # actors; 0 = one per CPU in the Ray cluster


@dataclass
class DataConfig:
    """The training loader: K viewpoints per clip, crops, steered-FOA features."""

    url: str = ".avsa/demo/shards"
    batch_size: int = 28  # clips per rank
    viewpoints: int = 4  # K
    frames: int = 8  # T video frames per viewpoint
    fps: int = 16
    crop_size: int = 112  # pixels, square
    fov_deg: tuple[float, float] = (25.0, 76.0)  # horizontal field of view range, degrees
    max_elevation_deg: float = 30.0
    min_separation_deg: float = 36.0
    # "labels": toward the labelled sound events of the clip (datasets with labels: STARSS23); "mix" takes
    # labels first where a clip has them, then detected objects, then sound peaks.
    viewpoint_sampler: Literal["random", "audio", "objects", "labels", "mix"] = "mix"
    audio_seconds: float = 1.0
    sample_rate: int = 24000  # Hz
    n_fft: int = 512
    hop: int = 240  # samples: 100 frames/s at 24 kHz
    n_mels: int = 128
    mel_scale: Literal["slaney", "htk"] = "slaney"
    top_db: float = 100.0
    # logmel_iv keeps the sign of direction; logmel (magnitudes) cannot tell a view from its antipode.
    feature: Literal["logmel", "logmel_iv", "cardioids", "stereo", "mono"] = "logmel_iv"
    stats_url: str = ""  # normalisation statistics; "" = the dataset's own (computed on first use)
    stats_clips: int = 512  # clips (spread over the dataset) the statistics are computed from
    flip_prob: float = 0.5
    # The negative control of the science experiment: each viewpoint's audio is steered this many degrees
    # of yaw away from where its video looks (uniform in the range, per viewpoint), so audio and video
    # directions are unrelated while every clip-level cue stays. (0, 0): toward the viewpoint.
    audio_yaw_offset_deg: tuple[float, float] = (0.0, 0.0)
    workers: int = 2  # loader worker processes per rank
    seed: int = 0
    resampled: bool = False  # open-ended training: sample shards with replacement
