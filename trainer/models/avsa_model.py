"""The AVSA model: both trunks, both context transformers and the four projection heads.

Per viewpoint k of a clip, the *targets* are each modality's own embedding (no context) and the
*predictions* come from the context transformer over the other modality's K viewpoints:

    video[k]      = video_head(V(video_k))         audio[k]      = audio_head(A(audio_k))
    video_pred[k] = video_pred_head(a2v(A(audio_1..K))[k])
    audio_pred[k] = audio_pred_head(v2a(V(video_1..K))[k])

The AVSA stage contrasts predictions with targets per viewpoint. The AVC stage contrasts clip-level
embeddings, which (as in the reference code) max-pool the 512-d features over viewpoints *before*
the heads: by default the two modalities' targets against each other (``train.avc_form``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainer.config import ModelConfig
from trainer.models.audio import AudioEncoder
from trainer.models.context import ContextTransformer
from trainer.models.heads import ProjectionHead
from trainer.models.video import VideoEncoder


@dataclass(frozen=True)
class Preset:
    """Trunk sizes: ``widths`` are the stage widths of both trunks, the last is the transformers' d_model."""

    widths: tuple[int, int, int, int]
    video_depths: tuple[int, int, int, int]  # basic blocks per video stage (the audio trunk has 1)


PRESETS: dict[str, Preset] = {
    "paper": Preset(widths=(64, 128, 256, 512), video_depths=(2, 2, 2, 2)),
    # Same architecture, 8× narrower and with half the video blocks: seconds per step on a CPU.
    "tiny": Preset(widths=(8, 16, 32, 64), video_depths=(1, 1, 1, 1)),
}


@dataclass
class Embeddings:
    """Unit-norm embeddings ``[..., embed_dim]``: targets (no context) and context predictions."""

    video: torch.Tensor
    audio: torch.Tensor
    video_pred: torch.Tensor  # video predicted from the clip's audio (audio→video transformer)
    audio_pred: torch.Tensor  # audio predicted from the clip's video (video→audio transformer)


@dataclass
class AVSAOutput:
    viewpoints: Embeddings  # each [B, K, embed_dim]: the AVSA stage
    clips: Embeddings  # each [B, embed_dim], pooled over the K viewpoints: the AVC stage


class AVSAModel(nn.Module):
    """Video ``[B, K, 3, T, H, W]``, audio ``[B, K, C, F, T]`` and viewpoint directions ``[B, K, 2]``
    (azimuth, elevation in radians) → :class:`AVSAOutput`. ``audio_channels`` is the feature's C."""

    def __init__(self, cfg: ModelConfig, audio_channels: int) -> None:
        super().__init__()
        preset = PRESETS[cfg.preset]
        d_model = preset.widths[-1]
        self.video_encoder = VideoEncoder(preset.widths, preset.video_depths)
        self.audio_encoder = AudioEncoder(audio_channels, preset.widths)

        def context() -> ContextTransformer:
            return ContextTransformer(
                d_model, cfg.context_layers, cfg.context_heads, cfg.context_dropout, cfg.direction_encoding
            )

        self.video_to_audio = context()
        self.audio_to_video = context()
        self.video_head = ProjectionHead(d_model, cfg.embed_dim, cfg.head)
        self.audio_head = ProjectionHead(d_model, cfg.embed_dim, cfg.head)
        self.video_pred_head = ProjectionHead(d_model, cfg.embed_dim, cfg.head)
        self.audio_pred_head = ProjectionHead(d_model, cfg.embed_dim, cfg.head)

    def forward(self, video: torch.Tensor, audio: torch.Tensor, directions: torch.Tensor) -> AVSAOutput:
        b, k = video.shape[:2]
        # Viewpoints are independent samples for the trunks; flatten/unflatten copy when the layout
        # requires it (channels-last inputs), unlike .view.
        v = self.video_encoder(video.flatten(0, 1)).unflatten(0, (b, k))  # [B, K, d_model]
        a = self.audio_encoder(audio.flatten(0, 1)).unflatten(0, (b, k))
        features = (v, a, self.audio_to_video(a, directions), self.video_to_audio(v, directions))
        heads = (self.video_head, self.audio_head, self.video_pred_head, self.audio_pred_head)
        return AVSAOutput(
            viewpoints=Embeddings(*(head(f) for head, f in zip(heads, features, strict=True))),
            clips=Embeddings(*(head(f.amax(dim=1)) for head, f in zip(heads, features, strict=True))),
        )
