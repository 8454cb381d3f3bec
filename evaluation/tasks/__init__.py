"""The benchmark tasks, one module each, all with the signature ``run(ctx: Context) -> TaskResult``.

Every task scores, in the same call and on the same held-out items, the checkpoint's frozen encoders
(method ``model``), the same architecture at random initialisation (``random_init``), the input oracle
(``input_oracle``: the same probe on the normalised, pooled input features, which bounds what the task can
get from the features alone) and the task's classical baseline where it has one. Each metric is a mean
over items with a 95 % interval from a bootstrap over scenes, and each method's difference from random
init carries the interval of a paired bootstrap (:mod:`evaluation.bootstrap`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np

from dataloading.config import StorageConfig
from dataloading.features import FeatureExtractor
from evaluation.bootstrap import Estimate, bootstrap, paired_difference
from evaluation.encoders import Embedder, InputOracle
from trainer.config import Config, EvalConfig

REFERENCE = "random_init"  # what every difference is taken against
T = TypeVar("T")
X = TypeVar("X")
# Evaluation settings of the service (where and when it looks), not of what a task computes.
SERVICE_ONLY = ("tracking_uri", "experiments", "poll_seconds", "lease_s", "trusted_roots")
# Data settings that shape training batches but not what an evaluation reads.
TRAINING_ONLY = (
    "batch_size", "workers", "flip_prob", "resampled", "stats_url", "stats_clips", "audio_yaw_offset_deg",
)  # fmt: skip


@dataclass
class Context:
    """A task's inputs: the trained and the random-init encoders (same architecture), the run's config
    and feature extractor (its settings and normalisation statistics: every method reads the same
    features), the input oracle, and a cache the tasks share (data read once per evaluation)."""

    model: Embedder
    random_init: Embedder
    suite: EvalConfig
    cfg: Config
    extractor: FeatureExtractor
    storage: StorageConfig | None = None
    oracle: InputOracle = field(default_factory=InputOracle)
    cache: dict[Any, Any] = field(default_factory=dict)
    baselines: dict[Any, Any] = field(default_factory=dict)

    def embedders(self) -> dict[str, Embedder]:
        """The methods that embed inputs, in report order."""
        return {"model": self.model, REFERENCE: self.random_init, "input_oracle": self.oracle}

    def scored(self, task: str, method: str, compute: Callable[[], T]) -> T:
        """``compute()`` for ``method`` on ``task``, or what an evaluation sharing ``baselines`` kept for
        it (see :meth:`scored_together`)."""
        return self.scored_together(task, {method: None}, lambda todo: {m: compute() for m in todo})[method]

    def scored_together(
        self, task: str, methods: dict[str, X], compute: Callable[[dict[str, X]], dict[str, T]]
    ) -> dict[str, T]:
        """``compute(todo)`` for the ``methods`` that still need it, in one call that can share work
        between them (the features every method embeds). Everything but the checkpoint's own ``model``
        depends only on the run's architecture, seed, features and the suite, not on the checkpoint, so
        it is kept in ``baselines``: evaluations that share that dict (see :func:`baseline_key`) compute
        it once."""
        todo = {m: x for m, x in methods.items() if m == "model" or (task, m) not in self.baselines}
        done = compute(todo) if todo else {}
        self.baselines.update({(task, m): v for m, v in done.items() if m != "model"})
        return {m: done[m] if m in done else self.baselines[(task, m)] for m in methods}


def suite_settings(suite: EvalConfig) -> dict[str, Any]:
    """The settings that shape an evaluation's results (``suite`` without :data:`SERVICE_ONLY`)."""
    return {k: v for k, v in asdict(suite).items() if k not in SERVICE_ONLY}


def baseline_key(cfg: Config, extractor: FeatureExtractor, suite: EvalConfig) -> str:
    """What the baselines of an evaluation depend on: the model architecture and initial seed, the
    feature settings and statistics, the held-out data location and the suite."""
    parts = {
        "model": asdict(cfg.model),
        "seed": cfg.train.seed,
        "data": {k: v for k, v in asdict(cfg.data).items() if k not in TRAINING_ONLY},
        "features": extractor.settings,
        "stats": None if extractor.stats is None else [extractor.stats.mean, extractor.stats.std],
        "suite": suite_settings(suite),
    }
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Scored:
    """Per-item values of one metric for several methods, on the same items; ``groups[i]`` is the scene
    of item i (what the bootstrap resamples)."""

    groups: np.ndarray
    values: dict[str, np.ndarray]


@dataclass
class TaskResult:
    """``scores[method][metric]`` and ``differences[method][metric]`` (method − random init) as
    :class:`Estimate`; ``primary`` names the headline metric; ``chance`` the metrics' chance levels.

    ``items`` keeps the per-item values behind every estimate (for pooling seeds in experiments).
    Optional details for plots: ``classes`` with ``confusion[method]`` (rows true, columns predicted),
    ``directions`` (``[N, 2]`` true azimuth/elevation, radians) with ``errors[method]`` (``[N]`` radians),
    ``per_class[method][class][metric]`` (SELD); ``files`` are written beside the report as artifacts.
    """

    task: str
    primary: str
    scores: dict[str, dict[str, Estimate]]
    differences: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)
    items: dict[str, Scored] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    confusion: dict[str, np.ndarray] = field(default_factory=dict)
    directions: np.ndarray | None = None
    errors: dict[str, np.ndarray] = field(default_factory=dict)
    per_class: dict[str, dict[str, dict[str, float]]] = field(
        default_factory=dict
    )  # method -> class -> metric
    files: dict[str, str] = field(default_factory=dict)  # artifact path -> text (e.g. submission CSVs)


def summarise(
    task: str,
    primary: str,
    metrics: dict[str, Scored],
    suite: EvalConfig,
    chance: dict[str, float] | None = None,
    **details: Any,
) -> TaskResult:
    """A :class:`TaskResult` from per-item values: every metric's estimate for every method, and each
    method's paired difference from random init where random init was scored."""
    result = TaskResult(task, primary, {}, chance=dict(chance or {}), items=metrics, **details)
    for metric, scored in metrics.items():
        for method, values in scored.values.items():
            estimate = bootstrap(values, scored.groups, suite.resamples, suite.seed)
            result.scores.setdefault(method, {})[metric] = estimate
            if method != REFERENCE and REFERENCE in scored.values:
                difference = paired_difference(
                    values, scored.values[REFERENCE], scored.groups, suite.resamples, suite.seed
                )
                result.differences.setdefault(method, {})[metric] = difference
    return result


RATIOS = ("er20", "seld_score")  # error rates that can pass 1: printed as they are, lower is better


def lower_is_better(metric: str) -> bool:
    """Errors (``*_deg``) and error rates (:data:`RATIOS`) fall as a method improves; every other
    metric is an accuracy."""
    return metric.endswith("_deg") or metric in RATIOS


def display_unit(metric: str) -> str:
    """How a metric is printed: ``%`` (accuracies, scaled by 100), ``°`` (errors) or ``""`` (rates)."""
    return "°" if metric.endswith("_deg") else "" if metric in RATIOS else "%"


def display_scale(metric: str) -> float:
    """Factor a metric is printed with: 100 for accuracies (%), 1 for degrees and error rates."""
    return 100.0 if display_unit(metric) == "%" else 1.0
