"""Results of several training runs pooled into one table: each arm's metrics over its seeds, and the
paired differences between arms, with 95 % intervals from a bootstrap over seeds × scenes.

The input is what every evaluation already keeps: each task's per-item values and their scenes
(:attr:`evaluation.tasks.TaskResult.items`). Runs of one arm differ by seed and are scored on the same
held-out items, so their values stack into ``[seeds, items]``; two arms are paired by seed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from evaluation.bootstrap import RESAMPLES, Estimate, bootstrap, paired_difference
from evaluation.suite import Report, cell, heading

CSV_COLUMNS = ("arm", "task", "metric", "mean", "ci_low", "ci_high", "seeds")


@dataclass(frozen=True)
class Row:
    """One arm (or ``A - B`` difference), task and metric, pooled over ``seeds`` seeds."""

    arm: str
    task: str
    metric: str
    estimate: Estimate
    seeds: int


@dataclass(frozen=True)
class ArmRuns:
    """Where an arm's values come from: ``method`` of its runs' reports (``model`` for a trained arm,
    ``random_init`` for the untrained one), one report per seed."""

    reports: Sequence[Report]
    method: str = "model"


def _values(runs: ArmRuns, task: str, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``[seeds, items]`` values of ``runs`` on (task, metric) and the items' scenes; None if absent."""
    rows, groups = [], None
    for report in runs.reports:
        result = report.result(task)
        scored = result.items.get(metric) if result else None
        if scored is None or runs.method not in scored.values:
            return None
        if groups is not None and not np.array_equal(groups, scored.groups):
            raise ValueError(f"{task} {metric}: the seeds were scored on different items")
        rows.append(scored.values[runs.method])
        groups = scored.groups
    return (np.stack(rows), groups) if rows else None


def metrics_of(arms: Mapping[str, ArmRuns]) -> list[tuple[str, str]]:
    """Every (task, metric) the first arm's first report has, in report order."""
    first = next(iter(arms.values())).reports[0]
    return [(r.task, m) for r in first.results for m in r.items]


def pool(
    arms: Mapping[str, ArmRuns],
    differences: Iterable[tuple[str, str]],
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> list[Row]:
    """A row per arm, task and metric, then a row per ``(a, b)`` of ``differences`` (arm ``a - b``),
    paired by seed; a metric an arm lacks is left out."""
    out = []
    for task, metric in metrics_of(arms):
        for arm, runs in arms.items():
            found = _values(runs, task, metric)
            if found is not None:
                values, groups = found
                out.append(Row(arm, task, metric, bootstrap(values, groups, resamples, seed), len(values)))
        for a, b in differences:
            found_a, found_b = _values(arms[a], task, metric), _values(arms[b], task, metric)
            if found_a is None or found_b is None:
                continue
            seeds = min(len(found_a[0]), len(found_b[0]))
            estimate = paired_difference(found_a[0][:seeds], found_b[0][:seeds], found_a[1], resamples, seed)
            out.append(Row(f"{a} - {b}", task, metric, estimate, seeds))
    return out


def to_csv(rows: Sequence[Row]) -> str:
    """``arm,task,metric,mean,ci_low,ci_high,seeds``; accuracies in [0, 1], errors in degrees."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        e = r.estimate
        writer.writerow((r.arm, r.task, r.metric, f"{e.mean:.6g}", f"{e.low:.6g}", f"{e.high:.6g}", r.seeds))
    return buf.getvalue()


def to_markdown(rows: Sequence[Row], metrics: Sequence[tuple[str, str]] | None = None) -> str:
    """Two markdown tables: arms × metrics (``mean [95 % interval]``), then the differences. Accuracies
    in %, errors in degrees; ``metrics`` picks and orders the columns (default: every one)."""
    columns = list(metrics or dict.fromkeys((r.task, r.metric) for r in rows))
    index = {(r.arm, r.task, r.metric): r for r in rows}
    arms = list(dict.fromkeys(r.arm for r in rows if " - " not in r.arm))
    diffs = list(dict.fromkeys(r.arm for r in rows if " - " in r.arm))

    def table(names: list[str], signed: bool) -> str:
        header = ["arm", *(heading(task, metric) for task, metric in columns)]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name in names:
            cells = [
                cell(index[(name, t, m)].estimate, m, signed) if (name, t, m) in index else "-"
                for t, m in columns
            ]
            lines.append("| " + " | ".join([name, *cells]) + " |")
        return "\n".join(lines)

    seeds = max((r.seeds for r in rows), default=0)
    note = f"Mean [95 % interval] over {seeds} seeds × held-out scenes; accuracies in %, errors in degrees."
    return f"{table(arms, False)}\n\n{table(diffs, True)}\n\n{note}\n"
