"""Steered DOA: localisation by the question the AVSA pretext asks, "is the source in front?".

Each clip is steered toward a grid of about 60 directions (elevation within ±50°) and every steered
copy is embedded by the frozen encoder. A linear "source in front" scorer is trained on (the first
``suite.steer_train_clips`` of) the head-training clips (positive: the grid direction is within 20° of
the source; negative otherwise), and a test clip's estimate is the grid direction it scores highest.
The grid spacing (~23° at 60 points) bounds the resolution: a perfect scorer errs by up to half of it.

The same DOA set and baselines as :mod:`evaluation.tasks.doa`: the intensity-vector estimator, random
init, and the input oracle (the scorer on the pooled steered features). With ``logmel`` the steered
W, Y, Z, X magnitudes are the same toward a source and away from it (front and back of the look
direction), so its oracle cannot do better than choosing between the two: near chance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from dataloading.features import FeatureExtractor
from dataloading.viewpoints import angular_distance
from evaluation.datasets import LabeledSet
from evaluation.encoders import Embedder
from evaluation.metrics import DOA_THRESHOLD_DEG, angular_error
from evaluation.probe import linear_scores
from evaluation.tasks import Context, TaskResult, summarise
from evaluation.tasks.doa import CHANCE, error_metrics, intensity_errors, single_source
from evaluation.tasks.features import clip_features

NAME = "doa_steered"
MAX_ELEVATION_DEG = 50.0
_CLIPS_PER_CHUNK = 4  # clips steered at once: each becomes grid-size feature maps


def steering_grid(
    count: int, max_elevation: float = math.radians(MAX_ELEVATION_DEG)
) -> tuple[Tensor, Tensor]:
    """``count`` directions (azimuth, elevation; radians) spread evenly over the band |elevation| ≤
    ``max_elevation``: equal-area rings (sin elevation uniform) on a golden-angle spiral."""
    i = torch.arange(count, dtype=torch.float64)
    elevation = torch.asin(math.sin(max_elevation) * (1 - 2 * (i + 0.5) / count))
    azimuth = torch.remainder(i * math.pi * (3 - math.sqrt(5)) + math.pi, 2 * math.pi) - math.pi
    return azimuth, elevation


def steered_embeddings(
    extractor: FeatureExtractor,
    embedders: dict[str, Embedder],
    clips: LabeledSet,
    grid: tuple[Tensor, Tensor],
) -> dict[str, Tensor]:
    """Each method's embeddings ``[N, G, D]`` of every clip steered toward every grid direction; the
    features are computed once for all methods, a few clips at a time (each becomes G feature maps)."""
    azimuth, elevation = (g.float() for g in grid)
    out: dict[str, list[Tensor]] = {m: [] for m in embedders}
    for start in range(0, len(clips.keys), _CLIPS_PER_CHUNK):
        part = LabeledSet(clips.foa[start : start + _CLIPS_PER_CHUNK], [], clips.manifest, [])
        features = clip_features(extractor, part, azimuth, elevation)  # [n, G, C, F, T]
        for method, embedder in embedders.items():
            out[method].append(embedder.embed_audio(features.flatten(0, 1)).unflatten(0, features.shape[:2]))
    return {m: torch.cat(parts) for m, parts in out.items()}


def in_front(grid: tuple[Tensor, Tensor], truth: Tensor) -> Tensor:
    """``[N, G]`` bool: grid direction g is within 20° of clip n's source."""
    distance = angular_distance(
        grid[0][None].numpy(), grid[1][None].numpy(), truth[:, :1].numpy(), truth[:, 1:].numpy()
    )
    return torch.from_numpy(np.degrees(distance) <= DOA_THRESHOLD_DEG)


def run(ctx: Context) -> TaskResult:
    (train, truth_train), (test, truth_test) = single_source(ctx, "train"), single_source(ctx, "test")
    keep = slice(0, ctx.suite.steer_train_clips)  # a linear scorer needs far fewer than 300 × 60 examples
    train, truth_train = (
        LabeledSet(train.foa[keep], train.meta[keep], train.manifest, train.keys[keep]),
        truth_train[keep],
    )
    grid = steering_grid(ctx.suite.steer_directions)
    labels = in_front(grid, truth_train).flatten()

    def scorer_errors(embedders: dict[str, Embedder]) -> dict[str, Tensor]:
        train_z = steered_embeddings(ctx.extractor, embedders, train, grid)
        test_z = steered_embeddings(ctx.extractor, embedders, test, grid)
        errors = {}
        for method in embedders:
            scores = linear_scores(train_z[method].flatten(0, 1), labels, test_z[method].flatten(0, 1))
            best = scores.view(len(test.keys), -1).argmax(1)
            errors[method] = angular_error(grid[0][best], grid[1][best], truth_test[:, 0], truth_test[:, 1])
        return errors

    errors = ctx.scored_together(NAME, ctx.embedders(), scorer_errors)
    errors["intensity"] = ctx.scored(NAME, "intensity", lambda: intensity_errors(test, truth_test))
    return summarise(
        NAME,
        "mean_error_deg",
        error_metrics(errors, test.keys),
        ctx.suite,
        chance=CHANCE,
        directions=truth_test.numpy(),
        errors={m: e.numpy().astype(np.float64) for m, e in errors.items()},
    )
