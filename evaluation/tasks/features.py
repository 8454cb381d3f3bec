"""What several tasks read: labeled FOA clips and held-out clips (once per evaluation, cached in the
context), and their features with the settings and statistics the run was trained with."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from dataloading.features import FeatureExtractor
from dataloading.synth.batches import SYNTHETIC_SCHEME
from evaluation.datasets import HeldOutClips, LabeledSet, held_out_clips, read_split
from evaluation.tasks import Context

log = logging.getLogger(__name__)

CHUNK = 16  # clips per STFT: bounds the complex spectrogram's memory


class NoHeldOutClips(LookupError):
    """The suite names no held-out clips and the run's own data is a shard dataset (training clips)."""


def labeled(ctx: Context, url: str, split: str) -> LabeledSet:
    """Split ``split`` of the labeled set at ``url``, read once per evaluation."""
    key = ("labeled", url, split)
    if key not in ctx.cache:
        ctx.cache[key] = read_split(url, split, ctx.storage)
    return ctx.cache[key]


def held_out(ctx: Context) -> HeldOutClips:
    """The suite's held-out clips with their steered, normalised features, read once per evaluation.

    Raises :class:`NoHeldOutClips` rather than score the run's training clips as if they were unseen.
    """
    url = ctx.suite.clips_url or ctx.cfg.data.url
    if not (ctx.suite.clips_url or url.startswith(SYNTHETIC_SCHEME)):
        raise NoHeldOutClips(
            f"no held-out clips: the run's data {url} is its training set; pass held-out shards "
            "(--clips URL, preprocessed from scenes the run never saw)"
        )
    if "held_out" not in ctx.cache:
        ctx.cache["held_out"] = held_out_clips(ctx.cfg, url, ctx.extractor, ctx.suite.clips, ctx.storage)
    return ctx.cache["held_out"]


def clip_features(
    extractor: FeatureExtractor,
    clips: LabeledSet,
    azimuth: Tensor | None = None,
    elevation: Tensor | None = None,
) -> Tensor:
    """Features ``[N, C, F, T]`` of every clip, or ``[N, G, C, F, T]`` steered toward directions ``[G]``
    (radians). Raises if the set's sample rate is not the run's: the mel bands would describe other
    frequencies."""
    if clips.sample_rate != extractor.sample_rate:
        raise ValueError(
            f"eval set sampled at {clips.sample_rate} Hz; the run's features need {extractor.sample_rate} Hz"
        )
    foa = clips.foa if azimuth is None else clips.foa[:, None]
    return torch.cat([extractor(part, azimuth, elevation) for part in foa.split(CHUNK)])


def logmel_statistics(extractor: FeatureExtractor, clips: LabeledSet) -> Tensor:
    """The classical baseline's input ``[N, 2·4·F]``: mean and std over time of each FOA log-mel band
    (raw log-mels: the probe standardises its inputs itself)."""
    logmel = clip_features(extractor.unnormalised("logmel"), clips)
    return torch.cat([logmel.mean(-1), logmel.std(-1)], 1).flatten(1)
