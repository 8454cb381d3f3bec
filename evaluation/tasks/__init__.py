"""The benchmark tasks, one module each, all with the signature ``run(ctx: Context) -> TaskResult``.

Every task scores the checkpoint's frozen encoders (method ``model``) and, in the same call, its
baselines (``random_init`` and the task's classical one), so a result row is self-contained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dataloading.config import StorageConfig
from evaluation.encoders import Encoders


@dataclass
class Suite:
    """What to evaluate on. An empty URL skips the tasks that need it, except ``clips_url``: empty
    means the run's own ``data.url`` — unseen clips of a synthetic source, but the training clips
    of a shard dataset (a warning says so; pass held-out shards instead, see :mod:`evaluation.datasets`)."""

    clips_url: str = ""
    clip_batches: int = 16  # batches of B clips × K viewpoints for AVC-Bin / AVSA-Bin
    classification_url: str = ""
    doa_url: str = ""
    probe_epochs: int = 100
    hidden: int = 128  # units of the MLP heads (AVC-Bin, AVSA-Bin, DOA); the probe is linear
    seed: int = 0


@dataclass
class Context:
    """A task's inputs: the trained and random-init encoders (same architecture and config)."""

    model: Encoders
    random_init: Encoders
    suite: Suite
    storage: StorageConfig | None = None


@dataclass
class TaskResult:
    """``scores[method][metric]``; ``primary`` names the headline metric (curves, report title).

    Optional details for plots: ``classes`` with ``confusion[method]`` (rows true, columns predicted),
    ``directions`` (``[N, 2]`` true azimuth/elevation, radians) with ``errors[method]`` (``[N]`` radians).
    """

    task: str
    primary: str
    scores: dict[str, dict[str, float]]
    classes: list[str] = field(default_factory=list)
    confusion: dict[str, np.ndarray] = field(default_factory=dict)
    directions: np.ndarray | None = None
    errors: dict[str, np.ndarray] = field(default_factory=dict)


def lower_is_better(metric: str) -> bool:
    """Errors (``*_deg``) fall as a method improves; every other metric is an accuracy."""
    return metric.endswith("_deg")
