"""95 % confidence intervals by the cluster bootstrap: whole scenes are resampled with replacement.

Items of one scene are correlated (a clip's viewpoints share a sound field, a scene's clips share a
room), so resampling single items would understate the uncertainty; resampling scenes does not. The
statistic is the mean item value over the resampled scenes' items (sum of values over number of items).
A paired difference between two methods scored on the same items resamples the same scenes for both,
so what they share (hard scenes, easy scenes) cancels and the interval is that of the difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 1000


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95 % interval, from ``groups`` independent scenes."""

    mean: float
    low: float
    high: float
    groups: int


def _group_sums(values: np.ndarray, groups: Sequence[object]) -> tuple[np.ndarray, np.ndarray, int]:
    """Per scene: the sum of its item values (``[..., G]`` for values ``[..., N]``) and its item count."""
    _, codes = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    count = int(codes.max()) + 1 if len(codes) else 0
    sums = np.stack([np.bincount(codes, weights=v, minlength=count) for v in values.reshape(-1, len(codes))])
    return sums.reshape(*values.shape[:-1], count), np.bincount(codes, minlength=count), count


def _resampled_means(
    values: np.ndarray, groups: Sequence[object], resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """(point estimates ``[...]``, bootstrap replicates ``[..., resamples]``, scene count)."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[-1] != len(groups) or not len(groups):
        raise ValueError(f"{values.shape[-1]} values for {len(groups)} group labels; need the same, > 0")
    sums, counts, n = _group_sums(values, groups)
    # Each replicate draws n scenes with replacement: how often each scene is drawn.
    weights = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples).T  # [G, R]
    replicates = (sums @ weights) / (counts @ weights)
    return sums.sum(-1) / counts.sum(), replicates, n


def _interval(point: float, replicates: np.ndarray, groups: int) -> Estimate:
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return Estimate(float(point), float(low), float(high), groups)


def bootstrap(
    values: np.ndarray, groups: Sequence[object], resamples: int = RESAMPLES, seed: int = 0
) -> Estimate:
    """Mean of per-item ``values`` ``[N]`` with a 95 % percentile interval over resampled scenes
    (``groups[i]`` is item i's scene)."""
    point, replicates, n = _resampled_means(values, groups, resamples, seed)
    return _interval(float(point), replicates, n)


def paired_difference(
    a: np.ndarray, b: np.ndarray, groups: Sequence[object], resamples: int = RESAMPLES, seed: int = 0
) -> Estimate:
    """Mean of ``a`` minus mean of ``b`` (both per item, on the same items) with its 95 % interval; the
    same scenes are resampled for both."""
    point, replicates, n = _resampled_means(np.stack([a, b]), groups, resamples, seed)
    return _interval(float(point[0] - point[1]), replicates[0] - replicates[1], n)
