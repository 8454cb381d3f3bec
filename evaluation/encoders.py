"""Frozen encoders of a checkpoint and of the same architecture at random initialisation.

The random-init baseline is built exactly as the trainer builds its model before step 1 (same
preset, feature channels and ``train.seed``), so "random init" is the run's own starting point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dataloading.config import StorageConfig
from dataloading.features import CHANNELS
from trainer.config import Config
from trainer.export import consolidated_state_dict
from trainer.models import AVSAModel

CHUNK = 32  # inputs per forward pass: bounds activation memory for the paper-size trunks


@dataclass
class Encoders:
    """The audio trunk (features ``[N, C, F, T]`` → ``[N, D]``) and the video trunk (crops
    ``[N, 3, T, H, W]`` → ``[N, D]``) in eval mode on ``device``, with the run's resolved config."""

    audio: nn.Module
    video: nn.Module
    cfg: Config
    device: torch.device

    @torch.no_grad()
    def embed_audio(self, features: Tensor) -> Tensor:
        """Audio embeddings ``[N, D]`` on the CPU."""
        return _embed(self.audio, features, self.device)

    @torch.no_grad()
    def embed_video(self, crops: Tensor) -> Tensor:
        """Video embeddings ``[N, D]`` on the CPU."""
        return _embed(self.video, crops, self.device)


def _embed(encoder: nn.Module, x: Tensor, device: torch.device) -> Tensor:
    return torch.cat([encoder(part.to(device, torch.float32)).float().cpu() for part in x.split(CHUNK)])


def _encoders(model: AVSAModel, cfg: Config, device: torch.device) -> Encoders:
    model = model.to(device).eval()
    return Encoders(model.audio_encoder, model.video_encoder, cfg, device)


def random_init(cfg: Config, device: torch.device) -> Encoders:
    """The run's model before training: same architecture, same seed."""
    torch.manual_seed(cfg.train.seed)
    return _encoders(AVSAModel(cfg.model, CHANNELS[cfg.data.feature]), cfg, device)


def from_checkpoint(
    tag_url: str, device: torch.device, storage: StorageConfig | None = None
) -> tuple[Encoders, dict[str, Any]]:
    """The trained encoders of the checkpoint at ``tag_url`` (ZeRO partitions merged to fp32) and its
    ``meta.json`` (step, run id). Raises if the checkpoint is incomplete or does not load strictly."""
    state, cfg, meta = consolidated_state_dict(tag_url, storage)
    model = AVSAModel(cfg.model, CHANNELS[cfg.data.feature])
    model.load_state_dict(state)
    return _encoders(model, cfg, device), meta


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the current CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
