"""One evaluation: every benchmark task on one checkpoint's frozen encoders, with its baselines.

report = evaluate_checkpoint("s3://avsa/ckpt/step_00001000", EvalConfig(doa_url=...))
reports = evaluate_checkpoints({"AVC stage": url1, "AVSA stage": url2}, suite)
print(format_table(reports))

Every number is a mean with its 95 % interval (bootstrap over scenes); the table shows each method,
the chance level, and each checkpoint's paired difference from random init.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dataloading.config import StorageConfig
from evaluation.bootstrap import Estimate
from evaluation.encoders import from_checkpoint, pick_device, random_init
from evaluation.tasks import (
    RATIOS,
    REFERENCE,
    Context,
    Scored,
    TaskResult,
    avc_bin,
    avsa_bin,
    baseline_key,
    classification,
    display_scale,
    display_unit,
    doa,
    doa_steered,
    lower_is_better,
    pretext,
    seld,
)
from evaluation.tasks.features import NoHeldOutClips
from trainer.config import EvalConfig

log = logging.getLogger(__name__)

Task = Callable[[Context], TaskResult]

TASK_ORDER = (
    avc_bin.NAME, avsa_bin.NAME, pretext.NAME, classification.NAME, doa.NAME, doa_steered.NAME, seld.NAME,
)  # fmt: skip
# MLflow metric names: eval/<task>/<method>/<metric><part>; a difference's method is "<method>-random_init".
PARTS = {"": "mean", "_ci_low": "low", "_ci_high": "high"}
CHANCE = "chance"  # the method name under which chance levels are logged
# Metrics kept in MLflow and results.json but left out of the printed table.
DETAIL_METRICS = ("avsa_chosen_",)


@dataclass
class Report:
    """The results of every task that ran on one checkpoint."""

    checkpoint: str
    step: int
    run_id: str | None
    results: list[TaskResult]
    seconds: float

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics ``eval/<task>/<method>/<metric>`` with ``_ci_low``/``_ci_high`` beside each,
        and ``eval/<task>/<method>-random_init/<metric>`` (+ interval) for the paired differences;
        errors in degrees, accuracies in [0, 1]."""
        out = {}
        for r in self.results:
            rows = [*r.scores.items(), *((f"{m}-{REFERENCE}", v) for m, v in r.differences.items())]
            for method, values in rows:
                for metric, estimate in values.items():
                    for suffix, field in PARTS.items():
                        out[f"eval/{r.task}/{method}/{metric}{suffix}"] = getattr(estimate, field)
            out |= {f"eval/{r.task}/{CHANCE}/{metric}": value for metric, value in r.chance.items()}
        return out

    def result(self, task: str) -> TaskResult | None:
        return next((r for r in self.results if r.task == task), None)


def results_from_metrics(metrics: Mapping[str, float]) -> list[TaskResult]:
    """The scores, differences and chance levels of :meth:`Report.metrics` read back (no plot details),
    in task order."""
    parts: dict[tuple[str, str, str], dict[str, float]] = {}
    results: dict[str, TaskResult] = {}
    for key, value in metrics.items():
        _, task, method, name = key.split("/")
        result = results.setdefault(task, TaskResult(task, "", {}))
        if method == CHANCE:
            result.chance[name] = value
            continue
        suffix = next((s for s in PARTS if s and name.endswith(s)), "")
        parts.setdefault((task, method, name.removesuffix(suffix)), {})[PARTS[suffix]] = value
    for (task, method, metric), fields in parts.items():
        if set(fields) != set(PARTS.values()):
            continue  # logged by an older version, without an interval
        estimate = Estimate(fields["mean"], fields["low"], fields["high"], 0)
        target = results[task].differences if method.endswith(f"-{REFERENCE}") else results[task].scores
        target.setdefault(method.removesuffix(f"-{REFERENCE}"), {})[metric] = estimate
        results[task].primary = results[task].primary or metric
    return [results[t] for t in TASK_ORDER if t in results and results[t].scores]


def report_to_json(report: Report) -> dict[str, Any]:
    """Everything behind a report, as JSON types, for reanalysis: estimates, chance levels, per-item
    values with their scenes (to pool seeds or re-bootstrap), classes and confusion matrices."""
    return {
        "checkpoint": report.checkpoint,
        "step": report.step,
        "run_id": report.run_id,
        "seconds": report.seconds,
        "tasks": {
            r.task: {
                "primary": r.primary,
                "scores": {m: {k: asdict(e) for k, e in v.items()} for m, v in r.scores.items()},
                "differences": {m: {k: asdict(e) for k, e in v.items()} for m, v in r.differences.items()},
                "chance": r.chance,
                "items": {
                    metric: {
                        "groups": s.groups.tolist(),
                        "values": {m: v.tolist() for m, v in s.values.items()},
                    }
                    for metric, s in r.items.items()
                },
                "classes": r.classes,
                "confusion": {m: c.tolist() for m, c in r.confusion.items()},
            }
            for r in report.results
        },
    }


def report_from_json(data: Mapping[str, Any]) -> Report:
    """The :class:`Report` that :func:`report_to_json` wrote (no plot details but the confusion)."""

    def estimates(
        by_method: Mapping[str, Mapping[str, Mapping[str, float]]],
    ) -> dict[str, dict[str, Estimate]]:
        return {m: {k: Estimate(**e) for k, e in v.items()} for m, v in by_method.items()}

    results = [
        TaskResult(
            task,
            t["primary"],
            estimates(t["scores"]),
            estimates(t["differences"]),
            dict(t["chance"]),
            {
                metric: Scored(np.asarray(i["groups"]), {m: np.asarray(v) for m, v in i["values"].items()})
                for metric, i in t["items"].items()
            },
            list(t["classes"]),
            {m: np.asarray(c) for m, c in t["confusion"].items()},
        )
        for task, t in data["tasks"].items()
    ]
    return Report(data["checkpoint"], int(data["step"]), data["run_id"], results, float(data["seconds"]))


def tasks_for(suite: EvalConfig) -> list[tuple[str, Task]]:
    """The tasks ``suite`` has inputs for, in report order."""
    tasks: list[tuple[str, Task]] = [(avc_bin.NAME, avc_bin.run), (avsa_bin.NAME, avsa_bin.run)]
    tasks.append((pretext.NAME, pretext.run))
    if suite.classification_url:
        tasks.append((classification.NAME, classification.run))
    if suite.doa_url:
        tasks += [(doa.NAME, doa.run), (doa_steered.NAME, doa_steered.run)]
    if suite.seld_url:
        tasks.append((seld.NAME, seld.run))
    return tasks


def evaluate_checkpoint(
    tag_url: str,
    suite: EvalConfig,
    storage: StorageConfig | None = None,
    baselines: Baselines | None = None,
) -> Report:
    """Run every task of ``suite`` on the checkpoint at ``tag_url`` (a ``step_…`` folder), on
    ``suite.device``.

    Tasks on held-out clips are skipped, with a warning, when the suite has none (the run's own shards
    are training data); any other failure (unreadable checkpoint, missing data) raises. ``baselines``
    keeps what does not depend on the checkpoint (random init, the oracle, classical baselines) for
    later evaluations of runs with the same architecture, seed, features and suite.
    """
    start = time.monotonic()
    dev = pick_device(suite.device)
    model, extractor, meta = from_checkpoint(tag_url, dev, storage)
    ctx = Context(model, random_init(model.cfg, dev), suite, model.cfg, extractor, storage)
    if baselines is not None:
        ctx.baselines = baselines.get(baseline_key(model.cfg, extractor, suite))
    results = []
    for name, task in tasks_for(suite):
        t0 = time.monotonic()
        try:
            results.append(task(ctx))
        except NoHeldOutClips as exc:
            log.warning("%s skipped: %s", name, exc)
            continue
        log.info("%s step %s: %s in %.1f s", name, meta["step"], _brief(results[-1]), time.monotonic() - t0)
    return Report(tag_url, int(meta["step"]), meta.get("run_id"), results, time.monotonic() - start)


def evaluate_checkpoints(
    checkpoints: Mapping[str, str], suite: EvalConfig, storage: StorageConfig | None = None
) -> dict[str, Report]:
    """{label: checkpoint tag URL} → {label: Report}, in the given order (for comparison tables); the
    baselines are computed once for checkpoints that share them."""
    baselines = Baselines()
    return {label: evaluate_checkpoint(url, suite, storage, baselines) for label, url in checkpoints.items()}


class Baselines:
    """Baseline results by :func:`evaluation.tasks.baseline_key`, the most recent ``size`` keys kept."""

    def __init__(self, size: int = 16) -> None:
        self.size, self._by_key = size, OrderedDict[str, dict[Any, Any]]()

    def get(self, key: str) -> dict[Any, Any]:
        """The results stored under ``key`` (a new, empty store if there are none yet)."""
        if key not in self._by_key:
            self._by_key[key] = {}
            while len(self._by_key) > self.size:
                self._by_key.popitem(last=False)
        self._by_key.move_to_end(key)
        return self._by_key[key]


def _brief(result: TaskResult) -> str:
    """``model 63.3 [58.1, 68.0] vs random_init 55.0 [...]`` for the task's primary metric."""
    return ", ".join(
        f"{m} {cell(values[result.primary], result.primary)}"
        for m, values in result.scores.items()
        if result.primary in values
    )


def cell(estimate: Estimate | None, metric: str, signed: bool = False) -> str:
    """``63.3 [58.1, 68.0]``: accuracies in %, errors in degrees, error rates to two decimals; "-"
    where there is none."""
    if estimate is None:
        return "-"
    scale = display_scale(metric)
    digits = 2 if metric in RATIOS else 1
    form = f"{{:{'+' if signed else ''}.{digits}f}}"
    values = [form.format(scale * v) for v in (estimate.mean, estimate.low, estimate.high)]
    return f"{values[0]} [{values[1]}, {values[2]}]"


def heading(task: str, metric: str) -> str:
    """``doa mean_error° ↓``, ``avc_bin acc% ↑``, ``seld er20 ↓``."""
    arrow = "↓" if lower_is_better(metric) else "↑"
    return f"{task} {metric.removesuffix('_deg')}{display_unit(metric)} {arrow}"


def _rows(reports: Mapping[str, Report]) -> list[tuple[str, str]]:
    """(task, metric) rows of the table, in task order, detail metrics left out."""
    first = next(iter(reports.values()))
    return [
        (r.task, metric)
        for r in first.results
        for metric in r.scores.get("model", {})
        if not metric.startswith(DETAIL_METRICS)
    ]


def format_table(reports: Mapping[str, Report]) -> str:
    """Plain-text tables: the scores (one row per task metric; a column per labelled checkpoint, then the
    first report's baselines and the chance level), then each checkpoint minus random init (paired).

    Cells are ``mean [95 % interval]``; accuracies in percent, DOA errors in degrees; "-" where a method
    does not apply.
    """
    if not reports:
        return "(no reports)"
    first = next(iter(reports.values()))
    rows = _rows(reports)
    baselines = sorted({m for r in first.results for m in r.scores if m != "model"}, key=_baseline_order)
    header = ["metric", *reports, *(m.replace("_", " ") for m in baselines), "chance"]
    body = []
    for task, metric in rows:
        labelled = [cell(_score(rep, task, "model", metric), metric) for rep in reports.values()]
        base = [cell(_score(first, task, m, metric), metric) for m in baselines]
        chance = _chance(first, task, metric)
        body.append([heading(task, metric), *labelled, *base, chance])
    table = _layout(header, body)
    diff_header = ["metric", *(f"{label} − random init" for label in reports)]
    diff_body = [
        [
            heading(task, metric),
            *(cell(_difference(rep, task, metric), metric, True) for rep in reports.values()),
        ]
        for task, metric in rows
    ]
    return f"{table}\n\n{_layout(diff_header, diff_body)}"


def _score(report: Report, task: str, method: str, metric: str) -> Estimate | None:
    result = report.result(task)
    return None if result is None else result.scores.get(method, {}).get(metric)


def _difference(report: Report, task: str, metric: str) -> Estimate | None:
    result = report.result(task)
    return None if result is None else result.differences.get("model", {}).get(metric)


def _chance(report: Report, task: str, metric: str) -> str:
    result = report.result(task)
    if result is None or metric not in result.chance:
        return "-"
    return f"{display_scale(metric) * result.chance[metric]:.{2 if metric in RATIOS else 1}f}"


def _layout(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _baseline_order(method: str) -> tuple[int, str]:
    return ({REFERENCE: 0, "input_oracle": 1}.get(method, 2), method)
