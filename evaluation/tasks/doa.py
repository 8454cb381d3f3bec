"""Direction of arrival: a small head on frozen audio embeddings of single-source clips predicts the
source direction; scored by great-circle error (mean, in degrees) and the fraction within 20°.

The DOA set has a head-training split and a test split in rooms of different size ranges, neither used
by pretraining (:mod:`dataloading.synth.evalsets`). Baselines: the classical intensity-vector estimator
(no training, :func:`dataloading.features.intensity_doa`), random init, and the input oracle. Features
are unsteered here: the head must read the direction off the features themselves, which log-mel
magnitudes cannot do up to the signs of x, y and z (see :mod:`evaluation.tasks.doa_steered` for the
protocol that matches the pretext).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from dataloading.features import intensity_doa
from dataloading.foa import direction_vector
from evaluation.datasets import LabeledSet
from evaluation.metrics import DOA_THRESHOLD_DEG, angular_error, vector_to_angles
from evaluation.probe import regress_direction
from evaluation.tasks import Context, Scored, TaskResult, summarise
from evaluation.tasks.features import clip_features, labeled

NAME = "doa"
# A direction guessed uniformly on the sphere is 90° off on average and within 20° with probability
# (1 − cos 20°) / 2, whatever the true direction.
CHANCE = {"mean_error_deg": 90.0, "acc20": (1 - math.cos(math.radians(DOA_THRESHOLD_DEG))) / 2}


def single_source(ctx: Context, split: str) -> tuple[LabeledSet, Tensor]:
    """The clips of the DOA set's ``split`` with exactly one source, and their directions ``[N, 2]``
    (azimuth, elevation) in radians."""
    clips = labeled(ctx, ctx.suite.doa_url, split)
    keep = [i for i, m in enumerate(clips.meta) if len(m["sources"]) == 1]
    if len(keep) < 4:
        raise ValueError(f"DOA set {split} split has {len(keep)} single-source clips; need at least 4")
    angles = [
        [m["sources"][0]["azimuth_deg"], m["sources"][0]["elevation_deg"]]
        for m in (clips.meta[i] for i in keep)
    ]
    subset = LabeledSet(
        clips.foa[keep], [clips.meta[i] for i in keep], clips.manifest, [clips.keys[i] for i in keep]
    )
    return subset, torch.deg2rad(torch.tensor(angles, dtype=torch.float64))


def error_metrics(errors: dict[str, Tensor], groups: list[str]) -> dict[str, Scored]:
    """Per-clip errors (radians) of each method as the two DOA metrics' items."""
    degrees = {m: np.rad2deg(e.double().numpy()) for m, e in errors.items()}
    return {
        "mean_error_deg": Scored(np.asarray(groups), degrees),
        "acc20": Scored(
            np.asarray(groups), {m: (d <= DOA_THRESHOLD_DEG).astype(np.float64) for m, d in degrees.items()}
        ),
    }


def intensity_errors(test: LabeledSet, truth: Tensor) -> Tensor:
    """Great-circle errors (radians) of the broadband intensity-vector estimate of each test clip."""
    az, el = intensity_doa(test.foa.double())
    return angular_error(az, el, truth[:, 0], truth[:, 1])


def run(ctx: Context) -> TaskResult:
    suite = ctx.suite
    (train, truth_train), (test, truth_test) = single_source(ctx, "train"), single_source(ctx, "test")
    f_train, f_test = clip_features(ctx.extractor, train), clip_features(ctx.extractor, test)
    target = direction_vector(truth_train[:, 0], truth_train[:, 1])

    def head_errors(embedder: object) -> Tensor:
        x_train, x_test = embedder.embed_audio(f_train), embedder.embed_audio(f_test)  # type: ignore[attr-defined]
        vectors = regress_direction(x_train, target, x_test, suite.probe_epochs, suite.hidden, suite.seed)
        az, el = vector_to_angles(vectors.double())
        return angular_error(az, el, truth_test[:, 0], truth_test[:, 1])

    errors = {m: ctx.scored(NAME, m, lambda e=e: head_errors(e)) for m, e in ctx.embedders().items()}
    errors["intensity"] = ctx.scored(NAME, "intensity", lambda: intensity_errors(test, truth_test))
    return summarise(
        NAME,
        "mean_error_deg",
        error_metrics(errors, test.keys),
        suite,
        chance=CHANCE,
        directions=truth_test.numpy(),
        errors={m: e.numpy().astype(np.float64) for m, e in errors.items()},
    )
