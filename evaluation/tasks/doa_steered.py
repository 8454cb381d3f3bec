"""Steered DOA: localisation by the question the AVSA pretext asks, "is the source in front?".

Each clip is steered toward a grid of about 60 directions (elevation within ±50°) and every steered
copy is embedded by the frozen encoder. A linear "source in front" scorer is trained on the
head-training clips (positive: the grid direction is within 20° of the source; negative otherwise), and
a test clip's estimate is the grid direction it scores highest. The grid spacing (~23° at 60 points)
bounds the resolution: a perfect scorer still errs by up to half a spacing.

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
    extractor: FeatureExtractor, embedder: Embedder, clips: LabeledSet, grid: tuple[Tensor, Tensor]
) -> Tensor:
    """Embeddings ``[N, G, D]`` of each clip steered toward each grid direction, a few clips at a time
    (each becomes G feature maps)."""
    azimuth, elevation = (g.float() for g in grid)
    out = []
    for start in range(0, len(clips.keys), _CLIPS_PER_CHUNK):
        part = LabeledSet(clips.foa[start : start + _CLIPS_PER_CHUNK], [], clips.manifest, [])
        features = clip_features(extractor, part, azimuth, elevation)  # [n, G, C, F, T]
        out.append(embedder.embed_audio(features.flatten(0, 1)).unflatten(0, features.shape[:2]))
    return torch.cat(out)


def in_front(grid: tuple[Tensor, Tensor], truth: Tensor) -> Tensor:
    """``[N, G]`` bool: grid direction g is within 20° of clip n's source."""
    distance = angular_distance(
        grid[0][None].numpy(), grid[1][None].numpy(), truth[:, :1].numpy(), truth[:, 1:].numpy()
    )
    return torch.from_numpy(np.degrees(distance) <= DOA_THRESHOLD_DEG)


def run(ctx: Context) -> TaskResult:
    (train, truth_train), (test, truth_test) = single_source(ctx, "train"), single_source(ctx, "test")
    grid = steering_grid(ctx.suite.steer_directions)
    labels = in_front(grid, truth_train).flatten()

    def scorer_errors(embedder: Embedder) -> Tensor:
        train_z = steered_embeddings(ctx.extractor, embedder, train, grid).flatten(0, 1)
        test_z = steered_embeddings(ctx.extractor, embedder, test, grid).flatten(0, 1)
        best = linear_scores(train_z, labels, test_z).view(len(test.keys), -1).argmax(1)
        return angular_error(grid[0][best], grid[1][best], truth_test[:, 0], truth_test[:, 1])

    errors = {m: ctx.scored(NAME, m, lambda e=e: scorer_errors(e)) for m, e in ctx.embedders().items()}
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
