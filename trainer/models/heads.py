"""Projection heads into the contrastive embedding space.

After ReLU and a global max pool every trunk feature is non-negative and shares one large positive
component, so a plain Linear head maps all inputs to nearly one direction: at initialisation the
embeddings' mean pairwise cosine is 0.90–0.97 and the InfoNCE logits barely differ. The other head
kinds remove that shared component before the projection (docs/results/learnability.md measures them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import HeadKind


class ProjectionHead(nn.Module):
    """``[..., in_dim]`` → unit vectors ``[..., out_dim]``.

    ``linear``: Linear (the papers' head). ``bn_linear``: a non-affine BatchNorm over the batch, then
    Linear: each input unit is centred and scaled, so no shared component survives. ``mlp``:
    Linear–BatchNorm–ReLU–Linear (SimCLR's projection head).
    """

    def __init__(self, in_dim: int, out_dim: int, kind: HeadKind = "linear") -> None:
        super().__init__()
        if kind == "linear":
            self.proj: nn.Module = nn.Linear(in_dim, out_dim)
        elif kind == "bn_linear":
            self.proj = nn.Sequential(nn.BatchNorm1d(in_dim, affine=False), nn.Linear(in_dim, out_dim))
        elif kind == "mlp":
            self.proj = nn.Sequential(
                nn.Linear(in_dim, in_dim, bias=False),
                nn.BatchNorm1d(in_dim),
                nn.ReLU(inplace=True),
                nn.Linear(in_dim, out_dim),
            )
        else:
            raise ValueError(f"unknown head kind {kind!r}; expected linear, bn_linear or mlp")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BatchNorm1d wants rows: [B, K, d] viewpoint features are normalised over all B·K of them.
        y = self.proj(x.flatten(0, -2)).unflatten(0, x.shape[:-1])
        return F.normalize(y, dim=-1)
