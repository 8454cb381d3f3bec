"""Figures of evaluation results, logged to MLflow as PNG artifacts.

Built as bare :class:`matplotlib.figure.Figure` objects, never through pyplot: no global figure
state or GUI backend in a long-running headless service.

- :func:`metric_curves`: every ``eval/…`` metric against the checkpoint step, one panel per task.
- :func:`doa_polar`: DOA error (degrees, radius) against the true azimuth (angle), per method.
- :func:`confusion`: the classification confusion matrices, one panel per method.
- :func:`per_class`: SELD F20, LE_CD and LR_CD per class, one bar per method.
- :func:`report_figure`: the one-page summary of one checkpoint (score table plus the two above).
- :func:`arm_comparison`: an experiment's arms side by side, a mean and its 95 % interval per metric.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.projections.polar import PolarAxes

from evaluation.bootstrap import Estimate
from evaluation.tasks import TaskResult, display_scale, display_unit

# One colour per method in every figure, so a method reads the same across panels.
COLOURS = {
    "model": "C0", "random_init": "C1", "logmel_stats": "C2", "intensity": "C3", "input_oracle": "C4",
    "crnn": "C5",
}  # fmt: skip

# (step, value) points of each flat metric key eval/<task>/<method>/<metric>
History = Mapping[str, Sequence[tuple[int, float]]]


def png_bytes(figure: Figure) -> bytes:
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def metric_curves(history: History) -> Figure:
    """One panel per (task, metric), one line per method with its 95 % band; accuracies in %, errors
    in degrees. Differences and chance levels in ``history`` are left out."""
    panels: dict[tuple[str, str], dict[str, dict[str, dict[int, float]]]] = {}
    for key, points in sorted(history.items()):
        _, task, method, name = key.split("/", 3)
        if "-" in method or method == "chance":
            continue
        part = next((p for p in ("_ci_low", "_ci_high") if name.endswith(p)), "")
        lines = panels.setdefault((task, name.removesuffix(part)), {}).setdefault(method, {})
        lines[part or "mean"] = dict(points)
    cols = min(3, max(1, len(panels)))
    rows = -(-max(1, len(panels)) // cols)
    figure = Figure(figsize=(4.5 * cols, 3.2 * rows))
    for i, ((task, metric), lines) in enumerate(panels.items()):
        ax = figure.add_subplot(rows, cols, i + 1)
        scale = display_scale(metric)
        for method, parts in sorted(lines.items()):
            steps = sorted(parts.get("mean", {}))
            colour = COLOURS.get(method)
            ax.plot(steps, [scale * parts["mean"][s] for s in steps], marker="o", color=colour, label=method)
            if all(s in parts.get(p, {}) for p in ("_ci_low", "_ci_high") for s in steps):
                low = [scale * parts["_ci_low"][s] for s in steps]
                high = [scale * parts["_ci_high"][s] for s in steps]
                ax.fill_between(steps, low, high, color=colour, alpha=0.15)
        ax.set_title(f"{task} {metric}", fontsize=9)
        ax.set_xlabel("checkpoint step")
        ax.set_ylabel({"°": "degrees", "%": "%"}.get(display_unit(metric), metric))
        ax.legend(fontsize=7)
    figure.tight_layout()
    return figure


def doa_polar(result: TaskResult) -> Figure:
    """Each test clip at its true azimuth, at a radius of its angular error in degrees, per method."""
    figure = Figure(figsize=(5.5, 5.5))
    _draw_polar(figure.add_subplot(projection="polar"), result)
    return figure


def confusion(result: TaskResult) -> Figure:
    """Row-normalised confusion matrices (true class down, predicted across), one panel per method."""
    figure = Figure(figsize=(4.2 * len(result.confusion), 4.0))
    for i, method in enumerate(result.confusion):
        _draw_confusion(figure.add_subplot(1, len(result.confusion), i + 1), result, method)
    figure.tight_layout()
    return figure


def per_class(result: TaskResult) -> Figure:
    """F20 (%), LE_CD (°) and LR_CD (%) of every class (rows of bars), one bar per method."""
    panels = (("f", "F20 %", 100.0), ("le", "LE_CD °", 1.0), ("lr", "LR_CD %", 100.0))
    methods = list(result.per_class)
    figure = Figure(figsize=(12, 3.2 * len(panels)))
    x = np.arange(len(result.classes))
    width = 0.8 / max(1, len(methods))
    for row, (key, label, scale) in enumerate(panels):
        ax = figure.add_subplot(len(panels), 1, row + 1)
        for i, method in enumerate(methods):
            values = [scale * result.per_class[method][c][key] for c in result.classes]
            ax.bar(x + i * width, values, width, color=COLOURS.get(method), label=method.replace("_", " "))
        ax.set_ylabel(label)
        ax.set_xticks(x + 0.4 - width / 2, result.classes if row == len(panels) - 1 else [], rotation=30)
    figure.axes[0].legend(fontsize=7, ncol=len(methods))
    figure.axes[0].set_title(f"{result.task}: per class (dev-test)", fontsize=9)
    figure.tight_layout()
    return figure


def arm_comparison(estimates: Mapping[tuple[str, str], Sequence[tuple[str, Estimate]]]) -> Figure:
    """One panel per (task, metric): each arm's mean as a dot and its 95 % interval as a bar, in the
    metric's display unit (accuracies in %, errors in degrees), arms in the order given."""
    keys = list(estimates)
    columns = min(3, max(1, len(keys)))
    rows = -(-len(keys) // columns)
    figure = Figure(figsize=(4.2 * columns, 0.4 + 0.3 * max(len(v) for v in estimates.values()) * rows))
    for i, (task, metric) in enumerate(keys):
        ax = figure.add_subplot(rows, columns, i + 1)
        arms = estimates[(task, metric)]
        scale, y = display_scale(metric), np.arange(len(arms))[::-1]
        means = np.array([scale * e.mean for _, e in arms])
        spread = np.array(
            [[scale * (e.mean - e.low) for _, e in arms], [scale * (e.high - e.mean) for _, e in arms]]
        )
        ax.errorbar(means, y, xerr=spread, fmt="o", color="C0", capsize=2)
        ax.set_yticks(y, [arm for arm, _ in arms] if i % columns == 0 else [], fontsize=7)
        ax.set_title(f"{task} {metric} ({display_unit(metric) or 'rate'})", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def report_figure(title: str, table: str, results: Sequence[TaskResult]) -> Figure:
    """One page: the score table, then the model's confusion matrix and the DOA polar plot."""
    panels = [r for r in results if r.confusion or r.errors]
    figure = Figure(figsize=(11, 2.5 + 5.0 * bool(panels)))
    text = figure.add_axes((0.02, 0.72, 0.96, 0.24) if panels else (0.02, 0.05, 0.96, 0.9))
    text.axis("off")
    text.set_title(title, loc="left", fontsize=11)
    text.text(0, 1, table, family="monospace", fontsize=8, va="top")
    width = 0.9 / max(1, len(panels))
    for i, result in enumerate(panels):
        box = (0.05 + i * width, 0.06, 0.85 * width, 0.56)
        if result.confusion:
            _draw_confusion(figure.add_axes(box), result, "model")
        else:
            _draw_polar(figure.add_axes(box, projection="polar"), result)
    return figure


def _draw_polar(ax: PolarAxes, result: TaskResult) -> None:
    assert result.directions is not None, "a DOA result carries its true directions"
    for method, errors in result.errors.items():
        ax.scatter(
            result.directions[:, 0],
            np.rad2deg(errors),
            s=12,
            alpha=0.7,
            color=COLOURS.get(method),
            label=method.replace("_", " "),
        )
    ax.set_theta_zero_location("N")  # front up; azimuth grows counter-clockwise, toward the left
    ax.set_rlabel_position(135)
    ax.set_title(f"{result.task}: error (°) by true azimuth", fontsize=9)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(-0.15, -0.15))


def _draw_confusion(ax: Axes, result: TaskResult, method: str) -> None:
    counts = result.confusion[method]
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    n = len(result.classes)
    ax.set_xticks(range(n), result.classes, rotation=90, fontsize=6)
    ax.set_yticks(range(n), result.classes, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        f"{result.task} {method.replace('_', ' ')}: {100 * result.scores[method]['acc'].mean:.1f}%",
        fontsize=9,
    )
