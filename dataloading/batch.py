"""From prepared clips to a training batch: gnomonic crops, joint augmentations, steered FOA features.

Two halves, split by where they run:

- :func:`crop_views` (CPU path, in a loader worker): K gnomonic crops of a decoded equirect frame window
  with :func:`dataloading.geometry.crop` (``grid_sample``). On GPU the same crops come from DALI's
  ``remap`` with the maps of :func:`remap_maps` (:class:`dataloading.dali_pipeline.GpuCropDecoder`).
- :class:`BatchBuilder` (on the training device): stacks the clips, applies the joint flip and the
  colour / volume jitter of :mod:`dataloading.augment`, then steers each clip's FOA toward its K
  viewpoints and computes the features (:class:`dataloading.features.FeatureExtractor`), one STFT per clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dataloading import augment
from dataloading.config import DataConfig
from dataloading.feature_stats import FeatureStats
from dataloading.features import FeatureExtractor
from dataloading.geometry import crop, remap_maps


@dataclass
class Batch:
    """One rank's batch of B clips × K viewpoints, on the training device.

    video: ``[B, K, 3, T, H, W]`` float32 RGB in [0, 1] (gnomonic crops, T frames);
    audio: ``[B, K, C, F, T']`` float32 steered-FOA features (C by feature set, F mels, T' STFT frames);
    directions: ``[B, K, 2]`` float32 (azimuth, elevation) in radians of each viewpoint, after any flip;
    meta: per clip ``key``, ``shard``, ``start_s`` (window start, seconds into the clip), ``fov``
    (``[B, K]`` horizontal field of view, radians) and ``flipped`` (``[B]`` bool); for logging only.
    """

    video: Tensor
    audio: Tensor
    directions: Tensor
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Clip:
    """One sample prepared by a loader worker: decoded FOA window, viewpoints and the video part.

    ``source`` names the input video (the scene: clips of one source are not independent).
    ``foa`` is ``[4, N]`` float32 (ACN/SN3D) at the training rate; angles are ``[K]`` float32 radians.
    The video part is either ``crops`` (CPU path: uint8 ``[K, 3, T, h, w]``, already augmented together
    with ``foa`` and ``azimuth``, see ``flipped``) or, for GPU decoding, the encoded ``mp4`` with its
    ``frame_window`` (first frame, stride) and the equirect ``size`` (w, h), augmented on the device.
    """

    key: str
    shard: str
    position: int
    source: str  # the input video the clip was cut from: its scene
    foa: Tensor
    azimuth: Tensor
    elevation: Tensor
    fov: Tensor
    start_s: float
    crops: Tensor | None = None
    mp4: bytes | None = None
    frame_window: tuple[int, int] = (0, 1)
    size: tuple[int, int] = (0, 0)
    flipped: bool = False
    audio_offset: Tensor | None = None  # [K] radians of yaw between each view's audio and video


def crop_views(
    frames: np.ndarray | Tensor, azimuth: Tensor, elevation: Tensor, fov: Tensor, size: int
) -> Tensor:
    """K gnomonic crops of a frame window: uint8 ``[T, H, W, 3]`` -> float ``[K, 3, T, size, size]``.

    Values in [0, 1]; angles and ``fov`` are ``[K]`` radians; bilinear (:func:`dataloading.geometry.crop`).
    """
    # Channels first while still uint8: the float copy is then contiguous and crop() reshapes it for free.
    video = torch.as_tensor(frames).permute(3, 0, 1, 2).contiguous().unsqueeze(0).float()  # [1, 3, T, H, W]
    return crop(video, azimuth[None], elevation[None], fov[None], size)[0].div_(255.0)


def to_uint8(video: Tensor) -> Tensor:
    """Float video in [0, 1] as uint8, to travel from a worker four times smaller (the source is 8-bit)."""
    return video.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def augment_views(
    video: Tensor, foa: Tensor, azimuth: Tensor, flip_prob: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Joint flip (probability ``flip_prob``), colour jitter and volume jitter of b clips, per clip.

    ``video`` float ``[b, K, 3, T, h, w]`` in [0, 1], ``foa`` ``[b, 4, N]``, ``azimuth`` ``[b, K]`` radians.
    Returns them augmented and which clips were flipped (``[b]`` bool, CPU).
    """
    flipped = torch.rand(video.shape[0], generator=generator) < flip_prob
    video, foa, azimuth = augment.horizontal_flip(video, foa, azimuth, flipped.to(video.device))
    video = augment.colour_jitter(video, generator=generator)
    return video, augment.volume_jitter(foa, generator=generator), azimuth, flipped


def stacked_remap_maps(
    azimuth: Tensor, elevation: Tensor, fov: Tensor, size: int, in_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """DALI remap maps (mapx, mapy), float32 ``[K·size, size]``: the K views stacked along the height."""
    width, height = in_size
    mapx, mapy = remap_maps(azimuth, elevation, fov, size, size, height, width)
    return mapx.reshape(-1, size).numpy(), mapy.reshape(-1, size).numpy()


def unstack_remapped(remapped: Tensor, views: int) -> Tensor:
    """GPU remap output uint8 ``[T, K·h, w, 3]`` -> ``[K, 3, T, h, w]``, the layout of :func:`crop_views`."""
    frames, height, width, _ = remapped.shape
    return remapped.reshape(frames, views, height // views, width, 3).permute(1, 4, 0, 2, 3)


class BatchBuilder:
    """Turns prepared clips and their crops into a :class:`Batch` on ``device``: features of the FOA
    steered toward each viewpoint, after the augmentations if the clips did not have them yet."""

    def __init__(
        self, cfg: DataConfig, device: torch.device | str = "cpu", stats: FeatureStats | None = None
    ) -> None:
        self.cfg, self.device = cfg, torch.device(device)
        self.extractor = FeatureExtractor.from_config(cfg, stats)

    def __call__(self, clips: list[Clip], crops: Tensor, generator: torch.Generator | None = None) -> Batch:
        """Batch ``clips`` with their uint8 crops ``[B, K, 3, T, h, w]`` (any device).

        With a ``generator`` the joint flip, colour and volume jitter are applied here, on the device.
        """
        device = self.device
        video = crops.to(device, non_blocking=True).float().div_(255.0)
        foa = torch.stack([c.foa for c in clips]).to(device, non_blocking=True)  # [B, 4, N]
        azimuth = torch.stack([c.azimuth for c in clips]).to(device)
        elevation = torch.stack([c.elevation for c in clips]).to(device)
        flipped = torch.tensor([c.flipped for c in clips])
        if generator is not None:
            video, foa, azimuth, flipped = augment_views(video, foa, azimuth, self.cfg.flip_prob, generator)
        # One STFT per clip, steered in the spectral domain toward its K viewpoints: [B, K, C, F, T'].
        audio = self.extractor(foa.unsqueeze(1), self._audio_azimuth(clips, azimuth, flipped), elevation)
        return Batch(
            video=video,
            audio=audio,
            directions=torch.stack((azimuth, elevation), -1),
            meta={
                "key": [c.key for c in clips],
                "shard": [c.shard for c in clips],
                "start_s": [c.start_s for c in clips],
                "fov": torch.stack([c.fov for c in clips]),
                "flipped": flipped,
            },
        )

    @staticmethod
    def _audio_azimuth(clips: list[Clip], azimuth: Tensor, flipped: Tensor) -> Tensor:
        """Where each view's audio is steered: its video's azimuth, plus the negative control's offset
        (mirrored with the clip: a flipped world turns the other way)."""
        if all(c.audio_offset is None for c in clips):
            return azimuth
        offset = torch.stack(
            [c.audio_offset if c.audio_offset is not None else torch.zeros(len(c.azimuth)) for c in clips]
        )
        return azimuth + torch.where(flipped[:, None], -offset, offset).to(azimuth)
