"""The training batch: B clips × K viewpoints of video crops and steered FOA features, its making, and
:class:`BatchSource`, the protocol every source of batches satisfies (what the trainer is written against).

- :class:`Clip` (made in a loader worker): one sample's FOA window, K viewpoints and its video part, either
  uint8 crops (CPU path: :func:`dataloading.geometry.crop_views`, then :func:`to_uint8`) or the encoded
  mp4, cropped on the device by DALI's ``remap`` with :func:`dataloading.geometry.stacked_remap_maps`
  (:class:`dataloading.dali_pipeline.GpuCropDecoder`).
- :class:`BatchBuilder` (on the training device): stacks the clips, applies the joint flip and the
  colour / volume jitter of :func:`dataloading.augment.augment_views` where the worker did not, then
  steers each clip's FOA toward its K viewpoints and computes the features
  (:class:`dataloading.features.FeatureExtractor`), one STFT per clip.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from dataloading.augment import augment_views
from dataloading.config import DataConfig
from dataloading.feature_stats import FeatureStats
from dataloading.features import FeatureExtractor


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


@dataclass(kw_only=True)  # azimuth, elevation and fov are neighbouring tensors: name them
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


def to_uint8(video: Tensor) -> Tensor:
    """Float video in [0, 1] as uint8, to travel from a worker four times smaller (the source is 8-bit)."""
    return video.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


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


@runtime_checkable
class BatchSource(Protocol):
    """An epoch-structured, resumable stream of :class:`Batch` for one rank.

    ``set_epoch(e)`` then iterating yields epoch ``e``'s batches, the same number on every rank
    (``batches_left()``; ``len(source)`` for a whole epoch), so no rank waits in a collective for a
    peer that ran out. If the source was positioned inside epoch ``e`` by ``load_state_dict``,
    iteration continues from there. ``state_dict()`` describes this rank's position after the last
    batch handed out, in plain JSON types; ``load_state_dict`` takes the states of every rank of the
    saving run, in rank order, whatever the world size was. ``stats`` are the normalisation statistics
    the audio features were standardised with (None: used as they are), saved with every checkpoint so
    evaluation and export normalise the same way.
    """

    stats: FeatureStats | None

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def batches_left(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, states: Sequence[dict[str, Any]]) -> None: ...
