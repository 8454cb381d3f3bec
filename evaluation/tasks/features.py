"""Audio features of labeled FOA clips with the settings the run was trained with."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from dataloading.config import DataConfig
from dataloading.features import FeatureExtractor
from evaluation.datasets import LabeledSet

CHUNK = 16  # clips per STFT: bounds the complex spectrogram's memory


def clip_features(data: DataConfig, clips: LabeledSet, feature: str | None = None) -> Tensor:
    """Unsteered features ``[N, C, F, T]`` of every clip (``feature`` overrides the run's feature set).

    Raises if the set's sample rate is not the run's: the mel bands would describe other frequencies.
    """
    if clips.sample_rate != data.sample_rate:
        raise ValueError(
            f"eval set sampled at {clips.sample_rate} Hz; the run's features expect {data.sample_rate} Hz"
        )
    extractor = FeatureExtractor.from_config(replace(data, feature=feature or data.feature))
    return torch.cat([extractor(part) for part in clips.foa.split(CHUNK)])


def logmel_statistics(data: DataConfig, clips: LabeledSet) -> Tensor:
    """The classical baseline's input ``[N, 2·4·F]``: mean and std over time of each FOA log-mel band."""
    logmel = clip_features(data, clips, "logmel")
    return torch.cat([logmel.mean(-1), logmel.std(-1)], 1).flatten(1)
