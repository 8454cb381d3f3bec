"""Config sections owned by the data side: storage, demo data, preprocessing (sample format) and loading.

Pure data: defaults follow the NeurIPS 2020 reference configs (see shared/REFERENCE.md).
The root of the tree is :class:`trainer.config.Config`. Each field's docstring is its help text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Layout = Literal["files", "starss23", "yt360"]
World = Literal["easy", "default"]  # the synthetic scenes' difficulty (dataloading.synth.scene.WORLDS)
# Audio features of a steered view; their channel counts are dataloading.features.CHANNELS.
Feature = Literal["logmel", "logmel_iv", "cardioids", "stereo", "mono"]
MelScale = Literal["slaney", "htk"]
ViewpointSampler = Literal["random", "audio", "objects", "labels", "mix"]


def check_equirect(size: tuple[int, int]) -> None:
    """Raise ``ValueError`` unless ``size`` (width, height in pixels) is 2:1 with even sides."""
    width, height = size
    if width != 2 * height or width % 2 or height % 2:
        raise ValueError(f"an equirect size must be 2:1 with even sides, e.g. [512, 256]; got {list(size)}")


@dataclass
class StorageConfig:
    """Object-storage access. ``None`` falls back to the standard AWS environment variables
    (``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_DEFAULT_REGION``)."""

    endpoint_url: str | None = None
    """S3 endpoint, e.g. http://127.0.0.1:8333; null: $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL."""
    access_key_id: str | None = None
    """S3 access key; null: $AWS_ACCESS_KEY_ID. Never saved with a config or checkpoint."""
    secret_access_key: str | None = None
    """S3 secret key; null: $AWS_SECRET_ACCESS_KEY. Never saved with a config or checkpoint."""
    region: str | None = None
    """S3 region; null: $AWS_DEFAULT_REGION."""
    retry_s: float = 180.0
    """About how long a request to S3 is retried while the store is unreachable or answers 500, 502,
    503 (SlowDown) or 504, with exponential backoff and jitter; errors that retrying cannot fix (403,
    NoSuchKey) fail at once. 0: no retries."""


@dataclass
class SynthConfig:
    """Synthetic 360° videos with FOA audio and ground truth (`avsa synth`), for demos and tests."""

    out: str = ".avsa/demo/raw"
    """Output folder, a local path or s3:// URL (preprocess.input reads the same one by default)."""
    videos: int = 4
    """Number of videos (scenes)."""
    seconds: float = 20.0
    """Length of each video in seconds."""
    seed: int = 0
    """Random seed: the same seed gives the same bytes, whatever the workers."""
    workers: int = 2
    """Parallel processes."""
    size: tuple[int, int] = (1024, 512)
    """Equirect frame width, height in pixels (2:1)."""
    fps: int = 30
    """Frames per second, constant."""
    layout: Layout = "files"
    """files: video_NNNNN.mp4 + .json; starss23 or yt360: the published tree of that dataset."""
    world: World = "default"
    """What the scenes hold. default: 2–4 sounding objects 6°–50° wide anywhere (across the seam, near
    the poles), silent look-alikes, pillars in front, off-screen sounds. easy: 1–2 sounding objects of
    distinct classes, 35°–60° wide, within 15° of the horizon, clear of the seam and at least 70° apart
    in azimuth, and nothing else: a check that the trunks can learn objects at all. Rooms, sound timings
    and backgrounds are alike in both."""
    eval_sets: bool = False
    """Also write the classification and DOA evaluation sets under OUT/eval/."""
    classification_clips: int = 30
    """Classification clips per class in each split (30: a 3-point standard error)."""
    doa_clips: int = 300
    """DOA clips in each split."""
    assets: str = ""
    """Asset cache folder; empty: $AVSA_ASSET_CACHE or ~/.cache/avsa/assets."""
    fetch: bool = True
    """Fetch missing real assets with apt-get download; false: only what the cache holds."""

    def __post_init__(self) -> None:
        check_equirect(self.size)


@dataclass
class PreprocessConfig:
    """Raw 360° videos -> WebDataset shards (the training sample format)."""

    input: str = ".avsa/demo/raw"
    """Folder (searched recursively), one video, or a listing (.txt: one URL per line; .json: a list)."""
    layout: Layout = "files"
    """How input is read: files takes every video under it (audio in the video or a sidecar beside it);
    starss23 and yt360 read the published tree of that dataset, pairing video, audio and labels by stem
    and adding labels and split to each clip's JSON."""
    output: str = ".avsa/demo/shards"
    """Dataset folder, a local path or s3:// URL."""
    clip_seconds: float = 10.0
    """Clip length in seconds."""
    shard_size: int = 64
    """Most clips per tar shard; shards are cut equal, give or take one."""
    video_size: tuple[int, int] = (512, 256)
    """Output equirect width, height in pixels (2:1)."""
    fps: int = 16
    """Output frames per second, constant."""
    codec: Literal["vp9", "vp8", "mjpeg"] = "vp9"
    """Output video codec (DALI's CPU decoder has no H.264)."""
    gop: int = 8
    """Frames between keyframes: short, so random access in a clip is cheap."""
    audio_rate: int = 24000
    """Output sample rate in Hz."""
    input_format: Literal["auto", "ambix", "fuma"] = "auto"
    """FOA convention of the inputs; auto reads a "fuma" metadata tag, else AmbiX."""
    detector: str = "builtin"
    """Object detector for the viewpoints: builtin, none, or onnx:PATH."""
    workers: int = 0
    """Ray actors; 0: one per CPU in the Ray cluster."""

    def __post_init__(self) -> None:
        check_equirect(self.video_size)


@dataclass
class DataConfig:
    """The training loader: K viewpoints per clip, crops, steered-FOA features."""

    url: str = ".avsa/demo/shards"
    """Shard dataset (local or s3://), or synthetic:// for clips generated on the fly."""
    batch_size: int = 28
    """Clips per rank and step."""
    viewpoints: int = 4
    """K: viewpoints per clip, each a video crop and the FOA steered toward it."""
    frames: int = 8
    """T: video frames per viewpoint."""
    fps: int = 16
    """Frame rate of the crops."""
    crop_size: int = 112
    """Side of the square video crops in pixels."""
    fov_deg: tuple[float, float] = (25.0, 76.0)
    """Range of the crops' horizontal field of view in degrees."""
    max_elevation_deg: float = 30.0
    """Largest viewpoint elevation in degrees, up or down."""
    min_separation_deg: float = 36.0
    """Smallest great-circle angle between a clip's viewpoints in degrees."""
    viewpoint_sampler: ViewpointSampler = "mix"
    """Where viewpoints look: random directions, sound peaks, detected objects, the labelled sound events
    (STARSS23), or mix: labels where a clip has them, then objects, then sound peaks."""
    audio_seconds: float = 1.0
    """Length of each viewpoint's audio in seconds."""
    sample_rate: int = 24000
    """Sample rate of the features in Hz."""
    n_fft: int = 512
    """FFT size of the spectrograms in samples."""
    hop: int = 240
    """Hop of the spectrograms in samples (100 frames per second at 24 kHz)."""
    n_mels: int = 128
    """Mel bands."""
    mel_scale: MelScale = "slaney"
    """Mel scale formula."""
    top_db: float = 100.0
    """Dynamic range kept below each spectrogram's peak, in dB."""
    feature: Feature = "logmel_iv"
    """Audio feature of each steered view: logmel_iv keeps the sign of direction (log-mel of W plus
    the intensity vector); logmel (magnitudes) cannot tell a view from its antipode."""
    stats_url: str = ""
    """Normalisation statistics; empty: the dataset's own (computed on first use, `avsa stats`)."""
    stats_clips: int = 512
    """Clips (spread over the dataset) the statistics are computed from."""
    flip_prob: float = 0.5
    """Probability of a horizontal flip of a clip (video mirrored, audio's Y negated)."""
    audio_yaw_offset_deg: tuple[float, float] = (0.0, 0.0)
    """Negative control: each viewpoint's audio is steered this many degrees of yaw away from where its
    video looks (uniform in the range, per viewpoint), so audio and video directions are unrelated while
    every clip-level cue stays. [0, 0]: toward the viewpoint."""
    workers: int = 2
    """Loader worker processes per rank."""
    seed: int = 0
    """Seed of the epoch plan (shard and clip order) and of the crops."""
    resampled: bool = False
    """Open-ended training: sample shards with replacement."""
    cache_passes: int = 0
    """0: read the shards every epoch; N: draw N sets of K viewpoints per clip (N loader epochs,
    augmentation included) once, keep them, and let every epoch pick one set per clip."""
    cache_dir: str = ""
    """Local folder of those replay caches (one file per dataset and setting, reused across runs);
    empty: ~/.cache/avsa/replay."""
