"""Context transformers over the K viewpoint embeddings of one clip.

One transformer reads the K video embeddings and predicts the audio at every viewpoint (video→audio),
the other reads the K audio embeddings and predicts the video (audio→video). Self-attention across
viewpoints is what lets a prediction use the rest of the scene. Without a direction encoding the
transformer is permutation-equivariant over viewpoints, as in the paper; the optional encoding
(an open improvement in the paper) tells it where each viewpoint looks.
"""

from __future__ import annotations

import torch
from torch import nn


class DirectionEncoding(nn.Module):
    """Fourier features of (azimuth, elevation) in radians, ``[B, K, 2]`` → ``[B, K, d_model]``.

    Integer frequencies 1..n_freqs keep the features 2π-periodic in azimuth, so φ = ±π agree.
    """

    def __init__(self, d_model: int, n_freqs: int = 4) -> None:
        super().__init__()
        self.n_freqs = n_freqs
        self.proj = nn.Linear(4 * n_freqs, d_model)

    def forward(self, directions: torch.Tensor) -> torch.Tensor:
        # Angles in fp32 even under bf16 training: sin/cos of multiples of π lose too much in bf16.
        freqs = torch.arange(1, self.n_freqs + 1, device=directions.device, dtype=torch.float32)
        angles = directions.float().unsqueeze(-1) * freqs  # [B, K, 2, n_freqs]
        features = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # [B, K, 4·n_freqs]
        return self.proj(features.to(self.proj.weight.dtype))


class ContextTransformer(nn.Module):
    """Post-norm transformer encoder (FFN 4·d_model, ReLU) over ``[B, K, d_model]`` viewpoint tokens."""

    def __init__(
        self, d_model: int, layers: int, heads: int, dropout: float, direction_encoding: bool
    ) -> None:
        super().__init__()
        self.directions = DirectionEncoding(d_model) if direction_encoding else None
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout, batch_first=True)
            for _ in range(layers)
        )

    def forward(self, tokens: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
        """tokens ``[B, K, d_model]``, directions ``[B, K, 2]`` (radians) → ``[B, K, d_model]``."""
        x = tokens if self.directions is None else tokens + self.directions(directions)
        for layer in self.layers:
            x = layer(x)
        return x
