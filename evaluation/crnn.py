"""The SELD baselines' networks: the per-frame head on frozen embeddings, and a from-scratch CRNN in the
shape of the DCASE 2023 FOA baseline (convolutions over log-mel + intensity vector, then a
bidirectional GRU, then multi-ACCDOA at 100-ms frames), small enough to train on a CPU.

Both output multi-ACCDOA in :mod:`evaluation.accdoa`'s layout ``[batch, frames, 3 tracks, 3 (x, y, z),
13 classes]`` through tanh, as the baseline does: a track's vector norm is its activity, its direction
the source's.
"""

from __future__ import annotations

from torch import Tensor, nn

from dataloading.dcase import CLASSES
from evaluation.accdoa import TRACKS

OUTPUTS = TRACKS * 3 * len(CLASSES)


def _as_accdoa(flat: Tensor) -> Tensor:
    """``[..., OUTPUTS]`` -> ``[..., tracks, xyz, classes]`` in (-1, 1) (the baseline's flat order)."""
    return flat.tanh().unflatten(-1, (TRACKS, 3, len(CLASSES)))


class FrameHead(nn.Module):
    """Multi-ACCDOA of each 100-ms frame from that frame's embedding ``[batch, frames, D]`` (one hidden
    ReLU layer, frames independent: the encoder's window already gives each frame its context)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, OUTPUTS))

    def forward(self, x: Tensor) -> Tensor:
        return _as_accdoa(self.net(x))


class CRNN(nn.Module):
    """Features ``[batch, C, mels, STFT frames]`` -> multi-ACCDOA ``[batch, label frames, 3, 3, 13]``.

    Three conv blocks (3×3, batch norm, ReLU) pool time by ``time_pool`` in all (the STFT frames per
    100-ms label frame) and mels by 4·4·2, as the baseline does; a 2-layer bidirectional GRU reads the
    frame sequence. ``filters`` and ``hidden`` are smaller than the baseline's 64 and 128 by default:
    same shape, a CPU budget.
    """

    def __init__(self, channels: int, mels: int, time_pool: int, filters: int = 32, hidden: int = 64) -> None:
        super().__init__()
        pools = _time_pools(time_pool)
        freq_pools = (4, 4, 2)
        blocks: list[nn.Module] = []
        width = channels
        for t, f in zip(pools, freq_pools, strict=True):
            blocks += [
                nn.Conv2d(width, filters, 3, padding=1),
                nn.BatchNorm2d(filters),
                nn.ReLU(),
                nn.MaxPool2d((f, t)),
            ]
            width = filters
        self.conv = nn.Sequential(*blocks)
        bands = max(1, mels // 32)
        self.gru = nn.GRU(filters * bands, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.Linear(hidden, OUTPUTS))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)  # [B, filters, bands, frames]
        h = h.permute(0, 3, 1, 2).flatten(2)
        h, _ = self.gru(h)
        return _as_accdoa(self.out(h))


def _time_pools(total: int) -> tuple[int, int, int]:
    """Three time-pooling factors whose product is ``total`` (e.g. 10 -> 5, 2, 1), largest first."""
    pools = []
    left = total
    for _ in range(2):
        factor = next(f for f in (5, 4, 3, 2, 1) if left % f == 0)
        pools.append(factor)
        left //= factor
    return pools[0], pools[1], left
