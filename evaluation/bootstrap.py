"""95 % confidence intervals by the cluster bootstrap: whole scenes are resampled with replacement.

Items of one scene are correlated (a clip's viewpoints share a sound field, a scene's clips share a
room), so resampling single items would understate the uncertainty; resampling scenes does not. The
statistic is the mean item value over the resampled scenes' items (sum of values over number of items).
A paired difference between two methods scored on the same items resamples the same scenes for both,
so what they share (hard scenes, easy scenes) cancels and the interval is that of the difference.

Several training seeds scored on the same held-out items form a crossed design: a replicate resamples
the seeds and the scenes independently, so the interval holds the run-to-run variation as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trainer.config import EvalConfig

CONFIDENCE = 0.95
RESAMPLES = EvalConfig.resamples  # the config's default, for callers without a config


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95 % interval, from ``groups`` independent scenes."""

    mean: float
    low: float
    high: float
    groups: int


def _group_sums(values: np.ndarray, groups: Sequence[object]) -> tuple[np.ndarray, np.ndarray, int]:
    """Per scene: the sum of its item values (``[..., G]`` for values ``[..., N]``), its item count, and
    the number of scenes."""
    _, codes = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    count = int(codes.max()) + 1 if len(codes) else 0
    sums = np.stack([np.bincount(codes, weights=v, minlength=count) for v in values.reshape(-1, len(codes))])
    return sums.reshape(*values.shape[:-1], count), np.bincount(codes, minlength=count), count


def _resampled_means(
    values: np.ndarray, groups: Sequence[object], resamples: int, seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """(point estimates ``[M]``, bootstrap replicates ``[M, resamples]``, scene count) of values
    ``[M, S, N]``: M methods (paired), S seeds, N items. Seeds and scenes are resampled independently (every
    seed scored the same scenes), the same draws for every method."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[-1] != len(groups) or not len(groups):
        raise ValueError(f"{values.shape[-1]} values for {len(groups)} group labels; need the same, > 0")
    sums, counts, n = _group_sums(values, groups)  # [M, S, G], [G]
    seeds = values.shape[1]
    rng = np.random.default_rng(seed)
    scene_w, seed_w = resample_weights(n, resamples, rng), resample_weights(seeds, resamples, rng)
    weighted = np.einsum("rs,msg,rg->mr", seed_w, sums, scene_w)
    replicates = weighted / (seeds * (scene_w @ counts))
    return sums.sum((1, 2)) / (seeds * counts.sum()), replicates, n


def resample_weights(n: int, resamples: int, rng: np.random.Generator | int) -> np.ndarray:
    """``[resamples, n]``: how often each of ``n`` groups is drawn when a replicate draws ``n`` of them
    with replacement (``rng`` or its seed). A statistic that is not a mean (a ratio of summed counts)
    is bootstrapped by weighting each group's counts with a row and scoring the sums."""
    rng = np.random.default_rng(rng)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)


def interval(point: float, replicates: np.ndarray, groups: int) -> Estimate:
    """``point`` with the 95 % percentile interval of its bootstrap ``replicates`` over ``groups``."""
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return Estimate(float(point), float(low), float(high), groups)


def _by_seed(values: np.ndarray) -> np.ndarray:
    """Per-item values as ``[S, N]``: one row for a single run, or one per seed."""
    values = np.asarray(values, dtype=np.float64)
    return values[None] if values.ndim == 1 else values


def bootstrap(
    values: np.ndarray, groups: Sequence[object], resamples: int = RESAMPLES, seed: int = 0
) -> Estimate:
    """Mean of per-item ``values`` with a 95 % percentile interval over resampled scenes (``groups[i]``
    is item i's scene). ``values`` is ``[N]``, or ``[S, N]`` for S seeds scored on the same items: then
    seeds are resampled too, so the interval covers the variation between training runs."""
    point, replicates, n = _resampled_means(_by_seed(values)[None], groups, resamples, seed)
    return interval(float(point[0]), replicates[0], n)


def paired_difference(
    a: np.ndarray, b: np.ndarray, groups: Sequence[object], resamples: int = RESAMPLES, seed: int = 0
) -> Estimate:
    """Mean of ``a`` minus mean of ``b`` (per item, on the same items; ``[N]`` or ``[S, N]``, seed s of one
    paired with seed s of the other) with its 95 % interval: the same scenes and seeds are resampled for
    both."""
    point, replicates, n = _resampled_means(np.stack([_by_seed(a), _by_seed(b)]), groups, resamples, seed)
    return interval(float(point[0] - point[1]), replicates[0] - replicates[1], n)
