"""One evaluation: every benchmark task on one checkpoint's frozen encoders, with its baselines.

report = evaluate_checkpoint("s3://avsa/ckpt/step_00001000", Suite(doa_url=...))
reports = evaluate_checkpoints({"AVC stage": url1, "AVSA stage": url2}, suite)
print(format_table(reports))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dataloading.config import StorageConfig
from evaluation.encoders import from_checkpoint, pick_device, random_init
from evaluation.tasks import (
    Context,
    Suite,
    TaskResult,
    avc_bin,
    avsa_bin,
    classification,
    doa,
    lower_is_better,
)

log = logging.getLogger(__name__)

Task = Callable[[Context], TaskResult]


@dataclass
class Report:
    """The results of every task that ran on one checkpoint."""

    checkpoint: str
    step: int
    run_id: str | None
    results: list[TaskResult]
    seconds: float

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics ``eval/<task>/<method>/<metric>`` (errors in degrees, accuracies in [0, 1])."""
        return {
            f"eval/{r.task}/{method}/{metric}": value
            for r in self.results
            for method, values in r.scores.items()
            for metric, value in values.items()
        }

    def result(self, task: str) -> TaskResult | None:
        return next((r for r in self.results if r.task == task), None)


TASK_ORDER = (avc_bin.NAME, avsa_bin.NAME, classification.NAME, doa.NAME)


def tasks_for(suite: Suite) -> list[tuple[str, Task]]:
    """The tasks ``suite`` has inputs for, in report order."""
    tasks: list[tuple[str, Task]] = [(avc_bin.NAME, avc_bin.run), (avsa_bin.NAME, avsa_bin.run)]
    if suite.classification_url:
        tasks.append((classification.NAME, classification.run))
    if suite.doa_url:
        tasks.append((doa.NAME, doa.run))
    return tasks


def evaluate_checkpoint(
    tag_url: str, suite: Suite, storage: StorageConfig | None = None, device: str = "auto"
) -> Report:
    """Run every task of ``suite`` on the checkpoint at ``tag_url`` (a ``step_…`` folder).

    Any failure (unreadable checkpoint, missing data) raises; the caller records it.
    """
    start = time.monotonic()
    dev = pick_device(device)
    model, meta = from_checkpoint(tag_url, dev, storage)
    ctx = Context(model, random_init(model.cfg, dev), suite, storage)
    results = []
    for name, task in tasks_for(suite):
        t0 = time.monotonic()
        results.append(task(ctx))
        log.info("%s step %s: %s in %.1f s", name, meta["step"], results[-1].scores, time.monotonic() - t0)
    return Report(tag_url, int(meta["step"]), meta.get("run_id"), results, time.monotonic() - start)


def evaluate_checkpoints(
    checkpoints: Mapping[str, str], suite: Suite, storage: StorageConfig | None = None, device: str = "auto"
) -> dict[str, Report]:
    """{label: checkpoint tag URL} → {label: Report}, in the given order (for comparison tables)."""
    return {label: evaluate_checkpoint(url, suite, storage, device) for label, url in checkpoints.items()}


def format_table(reports: Mapping[str, Report]) -> str:
    """A plain-text table: one column per task metric (by name), one row per labelled checkpoint,
    then the baselines of the first report (random init and each task's classical baseline).

    Accuracies are printed in percent, DOA errors in degrees; "-" where a method does not apply.
    """
    if not reports:
        return "(no reports)"
    first = next(iter(reports.values()))
    columns = [(r.task, metric) for r in first.results for metric in sorted(r.scores["model"])]
    rows: list[tuple[str, dict[str, dict[str, float]]]] = [
        (label, {r.task: r.scores["model"] for r in report.results}) for label, report in reports.items()
    ]
    baselines = sorted({m for r in first.results for m in r.scores if m != "model"}, key=_baseline_order)
    rows += [
        (m.replace("_", " "), {r.task: r.scores[m] for r in first.results if m in r.scores})
        for m in baselines
    ]
    header = ["method", *(f"{task} {_heading(metric)}" for task, metric in columns)]
    body = [[label, *(_cell(scores.get(task), metric) for task, metric in columns)] for label, scores in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _baseline_order(method: str) -> tuple[int, str]:
    return (0 if method == "random_init" else 1, method)


def _heading(metric: str) -> str:
    """``mean_error_deg`` → ``mean_error° ↓``, ``acc20`` → ``acc20% ↑``."""
    if lower_is_better(metric):
        return metric.removesuffix("_deg") + "° ↓"
    return metric + "% ↑"


def _cell(scores: dict[str, float] | None, metric: str) -> str:
    if scores is None or metric not in scores:
        return "-"
    value = scores[metric]
    return f"{value:.1f}" if lower_is_better(metric) else f"{100 * value:.1f}"
