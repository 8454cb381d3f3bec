"""The exported audio embedder: raw FOA waveforms in, embeddings out, with training's features.

    from trainer.embedder import load_audio_embedder
    embedder = load_audio_embedder("s3://bucket/export")
    z = embedder(foa, sample_rate=48000)          # foa [N, 4, samples] ACN/SN3D -> z [N, 512]

It resamples to the training rate, computes the run's features (:mod:`dataloading.features`, same
settings), standardises them with the statistics saved with the checkpoint and runs the frozen audio
trunk. A fine-tuning user writes no feature code. It needs torch and safetensors (plus fsspec to read
the URL): no DeepSpeed, DALI, Ray or MLflow is imported.
"""

from __future__ import annotations

import json
from typing import Any

from safetensors.torch import load as load_safetensors
from torch import Tensor, nn

from dataloading.config import StorageConfig
from dataloading.feature_stats import STATS_FILE, FeatureStats
from dataloading.features import FeatureExtractor
from dataloading.resample import resample
from dataloading.storage import filesystem, join
from trainer.models.audio import AudioEncoder
from trainer.models.video import VideoEncoder

Angle = Tensor | float | None  # radians: per clip and viewpoint, one for all, or None (unsteered)
#: Export folder layout version; :func:`read_export_config` refuses others.
FORMAT_VERSION = 2


class AudioEmbedder(nn.Module):
    """FOA ``[..., 4, samples]`` at any rate → embeddings ``[..., D]``, as the trained audio trunk sees it.

    ``extractor`` holds the training feature settings and statistics; ``sample_rate`` (Hz) is the rate
    the features expect. Optional (azimuth, elevation) in radians steer the field first, like training's
    viewpoints (broadcast against the leading dims, e.g. ``[N, 1, 4, S]`` with angles ``[N, K]``).
    """

    def __init__(self, encoder: AudioEncoder, extractor: FeatureExtractor, sample_rate: int) -> None:
        super().__init__()
        self.encoder, self.extractor, self.sample_rate = encoder, extractor, sample_rate

    def features(
        self, foa: Tensor, sample_rate: int, azimuth: Angle = None, elevation: Angle = None
    ) -> Tensor:
        """The normalised features ``[..., C, n_mels, frames]`` the encoder is fed."""
        if foa.shape[-2] != 4:
            raise ValueError(
                f"expected FOA with 4 channels (ACN W, Y, Z, X) at dim -2, got shape {tuple(foa.shape)}"
            )
        foa = resample(foa.float(), int(sample_rate), self.sample_rate)
        return self.extractor(foa, azimuth, elevation)

    def forward(
        self, foa: Tensor, sample_rate: int, azimuth: Angle = None, elevation: Angle = None
    ) -> Tensor:
        """Embeddings ``[..., D]`` of FOA ``[..., 4, samples]`` at ``sample_rate`` Hz, steered toward
        (``azimuth``, ``elevation``) in radians first when they are given."""
        feats = self.features(foa.to(next(self.encoder.parameters()).device), sample_rate, azimuth, elevation)
        lead = feats.shape[:-3]
        return self.encoder(feats.reshape(-1, *feats.shape[-3:])).reshape(*lead, -1)


def read_export_config(url: str, storage: StorageConfig | None = None) -> dict[str, Any]:
    """The ``config.json`` of the export folder ``url``; refuses other format versions."""
    fs, path = filesystem(join(url, "config.json"), storage)
    info = json.loads(fs.cat_file(path))
    if info.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{url}: export format {info.get('format')!r}, this version reads {FORMAT_VERSION}; "
            "re-export the checkpoint with `avsa export`"
        )
    return info


def _weights(url: str, name: str, storage: StorageConfig | None) -> dict[str, Tensor]:
    fs, path = filesystem(join(url, f"{name}.safetensors"), storage)
    return load_safetensors(fs.cat_file(path))


def load_audio_encoder(url: str, storage: StorageConfig | None = None) -> AudioEncoder:
    """The exported audio trunk alone, in eval mode: normalised features ``[N, C, F, T]`` → ``[N, D]``."""
    info = read_export_config(url, storage)
    model = AudioEncoder(info["audio_channels"], info["widths"])
    model.load_state_dict(_weights(url, "audio_encoder", storage))
    return model.eval()


def load_video_encoder(url: str, storage: StorageConfig | None = None) -> VideoEncoder:
    """The exported video trunk, in eval mode: crops ``[N, 3, T, H, W]`` in [0, 1] → ``[N, D]``."""
    info = read_export_config(url, storage)
    model = VideoEncoder(info["widths"], info["video_depths"])
    model.load_state_dict(_weights(url, "video_encoder", storage))
    return model.eval()


def load_audio_embedder(url: str, storage: StorageConfig | None = None) -> AudioEmbedder:
    """The exported :class:`AudioEmbedder` of folder ``url`` (a path or fsspec URL), in eval mode."""
    info = read_export_config(url, storage)
    features = info["audio_features"]
    stats = None
    if info.get("feature_stats"):
        fs, path = filesystem(join(url, STATS_FILE), storage)
        stats = FeatureStats.from_json(fs.cat_file(path))
    extractor = FeatureExtractor.from_config(features, stats)
    return AudioEmbedder(load_audio_encoder(url, storage), extractor, extractor.sample_rate).eval()
