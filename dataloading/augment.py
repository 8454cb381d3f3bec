"""Joint audio-visual augmentations that keep video and FOA spatially consistent.

A horizontal flip mirrors the world left-right: image columns reverse, azimuth φ → −φ, and in FOA the
left-right channel flips sign (Y → −Y, ACN 1). Flipping the video alone (as the reference code did)
would make left/right cues of audio and video disagree. Since mirroring commutes with steering
(steer(flip(foa), −φ, ν) = flip(steer(foa, φ, ν))), the flip can be applied to equirect frames with
unsteered FOA, or to crops with steered FOA and their viewpoint azimuths alike.

All randomness comes from a ``torch.Generator``; draws are per clip (the first dim), shared by the
clip's viewpoints and frames.
"""

from __future__ import annotations

import torch
from torch import Tensor

# ITU-R BT.601 luma weights, for the grey image that saturation jitter blends toward.
_LUMA = (0.299, 0.587, 0.114)


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape ``[B]`` values to broadcast over the remaining dims of ``like``."""
    return values.to(like.device).reshape(-1, *([1] * (like.dim() - 1)))


def horizontal_flip(
    video: Tensor, foa: Tensor, azimuth: Tensor, flip: Tensor | bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """Mirror video (width = last dim), FOA ``[..., 4, N]`` (Y → −Y) and azimuths (radians) together.

    ``flip`` is one bool or a bool tensor ``[B]`` selecting which clips (first dim of every input) flip.
    """
    mask = torch.as_tensor(flip, dtype=torch.bool).expand(video.shape[0])
    sign = torch.ones(4, dtype=foa.dtype, device=foa.device)
    sign[1] = -1.0
    flipped_foa = foa * sign[:, None]
    return (
        torch.where(_per_sample(mask, video), video.flip(-1), video),
        torch.where(_per_sample(mask, foa), flipped_foa, foa),
        torch.where(_per_sample(mask, azimuth), -azimuth, azimuth),
    )


def colour_jitter(
    video: Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    generator: torch.Generator | None = None,
    channel_dim: int = -4,
) -> Tensor:
    """Random brightness, contrast and saturation per clip for RGB video in [0, 1].

    Factors are drawn uniformly from [1 − s, 1 + s] for each strength s; the RGB axis is ``channel_dim``
    (−4 for ``[B, K, 3, T, H, W]``). Contrast blends toward the clip's mean grey level, saturation toward
    each pixel's luma. The result is clamped to [0, 1].
    """
    batch = video.shape[0]

    def factor(strength: float) -> Tensor:
        return _per_sample(1.0 + strength * (2.0 * torch.rand(batch, generator=generator) - 1.0), video)

    luma_weights = torch.tensor(_LUMA, dtype=video.dtype, device=video.device)
    shape = [1] * video.dim()
    shape[channel_dim] = 3
    luma_weights = luma_weights.reshape(shape)

    out = video * factor(brightness)
    grey = (out * luma_weights).sum(channel_dim, keepdim=True)
    mean_grey = grey.mean(dim=tuple(range(1, video.dim())), keepdim=True)
    out = mean_grey + factor(contrast) * (out - mean_grey)
    grey = (out * luma_weights).sum(channel_dim, keepdim=True)
    out = grey + factor(saturation) * (out - grey)
    return out.clamp(0.0, 1.0)


def volume_jitter(foa: Tensor, max_db: float = 6.0, generator: torch.Generator | None = None) -> Tensor:
    """Scale each clip's FOA by a random gain uniform in ±``max_db`` dB, the same for all four channels
    (so directional cues are untouched)."""
    gain_db = max_db * (2.0 * torch.rand(foa.shape[0], generator=generator) - 1.0)
    return foa * _per_sample(10.0 ** (gain_db / 20.0), foa).to(foa.dtype)


def augment_views(
    video: Tensor, foa: Tensor, azimuth: Tensor, flip_prob: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Joint flip (probability ``flip_prob``), colour jitter and volume jitter of b clips, per clip.

    ``video`` float ``[b, K, 3, T, h, w]`` in [0, 1], ``foa`` ``[b, 4, N]``, ``azimuth`` ``[b, K]`` radians.
    Returns them augmented and which clips were flipped (``[b]`` bool, CPU).
    """
    flipped = torch.rand(video.shape[0], generator=generator) < flip_prob
    video, foa, azimuth = horizontal_flip(video, foa, azimuth, flipped.to(video.device))
    video = colour_jitter(video, generator=generator)
    return video, volume_jitter(foa, generator=generator), azimuth, flipped
