"""Direction of arrival: a small head on frozen audio embeddings of single-source clips predicts the
source direction; scored by great-circle error (mean, in degrees) and the fraction within 20°.

The DOA set has one test split; its single-source clips are split in two by position (even clips
train the head, odd clips test it). Two-source clips are left out: one direction per clip is what
a single-output head can be scored on. Baselines: the classical intensity-vector estimator (no
training, :func:`dataloading.features.intensity_doa`) and the random-init encoder.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dataloading.features import intensity_doa
from dataloading.foa import direction_vector
from evaluation.datasets import LabeledSet, read_split
from evaluation.metrics import angular_error, doa_summary, vector_to_angles
from evaluation.probe import regress_direction
from evaluation.tasks import Context, TaskResult
from evaluation.tasks.features import clip_features

NAME = "doa"


def single_source(clips: LabeledSet) -> tuple[LabeledSet, Tensor]:
    """The clips with exactly one source and their directions ``[N, 2]`` (azimuth, elevation) in radians."""
    keep = [i for i, m in enumerate(clips.meta) if len(m["sources"]) == 1]
    if len(keep) < 4:
        raise ValueError(f"DOA set has {len(keep)} single-source clips; need at least 4")
    angles = [
        [m["sources"][0]["azimuth_deg"], m["sources"][0]["elevation_deg"]]
        for m in (clips.meta[i] for i in keep)
    ]
    subset = LabeledSet(clips.foa[keep], [clips.meta[i] for i in keep], clips.manifest)
    return subset, torch.deg2rad(torch.tensor(angles, dtype=torch.float64))


def run(ctx: Context) -> TaskResult:
    clips, truth = single_source(read_split(ctx.suite.doa_url, "test", ctx.storage))
    train, test = slice(0, None, 2), slice(1, None, 2)
    features = clip_features(ctx.model.cfg.data, clips)
    target = direction_vector(truth[:, 0], truth[:, 1])
    az_true, el_true = truth[test].unbind(-1)
    estimates: dict[str, tuple[Tensor, Tensor]] = {}
    for method, encoders in (("model", ctx.model), ("random_init", ctx.random_init)):
        x = encoders.embed_audio(features)
        vectors = regress_direction(
            x[train], target[train], x[test], ctx.suite.probe_epochs, ctx.suite.hidden, ctx.suite.seed
        )
        estimates[method] = vector_to_angles(vectors.double())
    estimates["intensity"] = intensity_doa(clips.foa[test].double())
    result = TaskResult(NAME, "mean_error_deg", {}, directions=truth[test].numpy())
    for method, (az, el) in estimates.items():
        errors = angular_error(az, el, az_true, el_true)
        result.scores[method] = doa_summary(errors)
        result.errors[method] = errors.numpy().astype(np.float64)
    return result
