"""What the tasks embed inputs with: a checkpoint's frozen model, the same architecture at random
initialisation, and the input oracle.

The random-init baseline is built exactly as the trainer builds its model before step 1 (same preset,
feature channels and ``train.seed``), so "random init" is the run's own starting point; it reads the
same normalised features. The input oracle is no network at all: the features pooled over time (audio)
and space-time (video), so a probe on it measures what the task can get from the inputs alone.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from dataloading.config import StorageConfig
from dataloading.features import FeatureExtractor, FeatureSettings
from trainer.checkpoint import read_stats
from trainer.config import Config
from trainer.export import consolidated_state_dict
from trainer.models import AVSAModel, AVSAOutput

# Inputs per forward pass: large enough to amortise the small convolutions of the tiny preset on a CPU
# (measured ~30× faster per input than 32), small enough to bound the paper trunks' activation memory.
CHUNK = 256
# Video pooled to 4×4 cells of the mean frame: colour layout, the oracle's view of a crop.
_VIDEO_CELLS = (1, 4, 4)


class Embedder(Protocol):
    """Audio features ``[N, C, F, T]`` and crops ``[N, 3, T, H, W]`` (uint8 or [0, 1]) → ``[N, D]``."""

    def embed_audio(self, features: Tensor) -> Tensor: ...

    def embed_video(self, crops: Tensor) -> Tensor: ...


def as_unit_float(crops: Tensor) -> Tensor:
    """Crops as float in [0, 1] (uint8 crops are scaled by 1/255)."""
    return crops.float().div_(255.0) if crops.dtype == torch.uint8 else crops.float()


@dataclass
class Encoders:
    """The whole AVSA model in eval mode on ``device`` with the run's resolved config. Embeddings come
    back on the CPU."""

    model: AVSAModel
    cfg: Config
    device: torch.device

    @torch.inference_mode()
    def embed_audio(self, features: Tensor) -> Tensor:
        """Audio trunk embeddings ``[N, D]`` of normalised features ``[N, C, F, T]``."""
        return _chunked(self.model.audio_encoder, self.device, features, torch.channels_last)

    @torch.inference_mode()
    def embed_video(self, crops: Tensor) -> Tensor:
        """Video trunk embeddings ``[N, D]`` of crops ``[N, 3, T, H, W]``."""
        return _chunked(self.model.video_encoder, self.device, crops)

    @torch.inference_mode()
    def forward(self, video: Tensor, audio: Tensor, directions: Tensor) -> AVSAOutput:
        """The full model (trunks, context transformers, heads) on clips ``[N, K, …]``, on the CPU."""
        outs = [
            self.model(as_unit_float(v).to(self.device), a.to(self.device).float(), d.to(self.device).float())
            for v, a, d in zip(video.split(CHUNK), audio.split(CHUNK), directions.split(CHUNK), strict=True)
        ]
        return _concat_outputs(outs)


class InputOracle:
    """The pooled inputs as "embeddings": per channel × mel mean over time of the (normalised) audio
    features, and the mean colour of 4×4 cells of a crop."""

    def embed_audio(self, features: Tensor) -> Tensor:
        return features.float().mean(-1).flatten(1)

    def embed_video(self, crops: Tensor) -> Tensor:
        return torch.cat(
            [F.adaptive_avg_pool3d(as_unit_float(c), _VIDEO_CELLS).flatten(1) for c in crops.split(CHUNK)]
        )


def _chunked(
    encoder: torch.nn.Module,
    device: torch.device,
    x: Tensor,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor:
    """``encoder`` over ``x`` in chunks; ``memory_format`` for the inputs (channels-last convolutions
    measured ~4× faster on CPU for the 2D audio trunk; the weights follow the input's layout)."""
    parts = (as_unit_float(p).to(device).contiguous(memory_format=memory_format) for p in x.split(CHUNK))
    return torch.cat([encoder(part).float().cpu() for part in parts])


def _concat_outputs(outs: list[AVSAOutput]) -> AVSAOutput:
    def cat(parts: list[Any]) -> Any:
        names = [f.name for f in fields(parts[0])]
        return type(parts[0])(**{n: torch.cat([getattr(p, n).float().cpu() for p in parts]) for n in names})

    return AVSAOutput(viewpoints=cat([o.viewpoints for o in outs]), clips=cat([o.clips for o in outs]))


def _encoders(model: AVSAModel, cfg: Config, device: torch.device) -> Encoders:
    return Encoders(model.to(device).eval(), cfg, device)


def random_init(cfg: Config, device: torch.device) -> Encoders:
    """The run's model before training: same architecture, same seed."""
    torch.manual_seed(cfg.train.seed)
    return _encoders(AVSAModel(cfg.model, FeatureSettings.of(cfg.data).channels), cfg, device)


def from_checkpoint(
    tag_url: str, device: torch.device, storage: StorageConfig | None = None
) -> tuple[Encoders, FeatureExtractor, dict[str, Any]]:
    """The trained model of the checkpoint at ``tag_url`` (ZeRO partitions merged to fp32), the feature
    extractor it was trained with (its settings and normalisation statistics) and its ``meta.json``
    (step, run id). Raises if the checkpoint is incomplete or does not load strictly."""
    state, cfg, meta = consolidated_state_dict(tag_url, storage)
    extractor = FeatureExtractor.from_config(cfg.data, read_stats(tag_url, storage))
    model = AVSAModel(cfg.model, extractor.channels)
    model.load_state_dict(state)
    return _encoders(model, cfg, device), extractor, meta


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the current CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
