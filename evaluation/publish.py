"""Writing one evaluation into MLflow: a linked evaluation run with the details, and the results in
the originating training run at the checkpoint's step.

The originating run gets its metrics exactly once: they go in one ``log_batch`` together with the
final marker tag, and before logging, a retry checks whether the run already holds the
``eval/completed`` sentinel at that step (a previous attempt that died after its metrics landed);
artifacts are written under fixed names first, so a retry overwrites rather than duplicates them.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from evaluation import plots, report
from evaluation.discovery import Checkpoint
from evaluation.suite import Report, report_to_json
from trainer.checkpoint import tag_for_step
from trainer.config import EvalConfig

SENTINEL = "eval/completed"
PARENT_TAG = "mlflow.parentRunId"  # shows the evaluation nested under its training run in the UI


def start_eval_run(client: MlflowClient, ckpt: Checkpoint, attempt: int, suite: EvalConfig) -> str:
    """A new evaluation run beside the training run, tagged with what it evaluates."""
    parent = client.get_run(ckpt.run_id)
    name = f"eval {parent.info.run_name} step {ckpt.step}"
    tags = {
        PARENT_TAG: ckpt.run_id,
        "avsa.eval.parent_run": ckpt.run_id,
        "avsa.eval.step": str(ckpt.step),
        "avsa.eval.checkpoint": ckpt.url,
        "avsa.eval.attempt": str(attempt),
    }
    run = client.create_run(ckpt.experiment_id, run_name=name, tags=tags)
    for key, value in asdict(suite).items():
        client.log_param(run.info.run_id, f"suite.{key}", str(value))
    return run.info.run_id


def publish(client: MlflowClient, ckpt: Checkpoint, eval_run: str, result: Report) -> list[Metric]:
    """Log ``result`` to the evaluation run (metrics, figures, HTML report, results.json; then FINISHED)
    and its report and the curves to the training run under ``eval/``; returns the metrics for
    :func:`commit`."""
    metrics = result.metrics()
    images = {name: plots.png_bytes(fig) for name, fig in report.figures(result).items()}
    now = int(time.time() * 1000)
    batch = [Metric(k, v, now, result.step) for k, v in metrics.items()]
    client.log_batch(eval_run, metrics=batch)
    with tempfile.TemporaryDirectory(prefix="avsa-eval-") as tmp:
        folder = Path(tmp, tag_for_step(result.step))
        folder.mkdir()
        for name, data in images.items():
            (folder / name).write_bytes(data)
        (folder / "report.html").write_text(report.page(result, images))
        write_results(result, folder)
        client.log_artifacts(eval_run, str(folder))
        client.set_terminated(eval_run, "FINISHED")
        for name in ("report.html", "report.png"):
            client.log_artifact(ckpt.run_id, str(folder / name), f"eval/{folder.name}")
        curves = Path(tmp, "metrics_vs_step.png")
        curves.write_bytes(
            plots.png_bytes(plots.metric_curves(_history(client, ckpt.run_id, metrics, result.step)))
        )
        client.log_artifact(ckpt.run_id, str(curves), "eval")
    return batch


def write_results(result: Report, folder: Path) -> list[Path]:
    """``results.json`` (everything behind the report) and the tasks' text artifacts (SELD submission
    CSVs, per-class tables) under ``folder``; returns the paths written."""
    (folder / "results.json").write_text(json.dumps(report_to_json(result), indent=1))
    written = [folder / "results.json"]
    for task in result.results:
        for name, text in task.files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written


def commit(client: MlflowClient, ckpt: Checkpoint, metrics: list[Metric], final: dict[str, str]) -> None:
    """The metrics at the checkpoint's step on the training run, with the ``final`` marker tags in the
    same batch; only the tags if an earlier attempt's metrics landed already."""
    tags = [RunTag(k, v) for k, v in final.items()]
    if any(m.step == ckpt.step for m in client.get_metric_history(ckpt.run_id, SENTINEL)):
        client.log_batch(ckpt.run_id, tags=tags)
    else:
        sentinel = Metric(SENTINEL, 1.0, int(time.time() * 1000), ckpt.step)
        client.log_batch(ckpt.run_id, metrics=[*metrics, sentinel], tags=tags)


def _history(client: MlflowClient, run_id: str, current: dict[str, float], step: int) -> plots.History:
    """Every eval metric of the run by step, with this evaluation's values (not logged yet) included."""
    history: dict[str, list[tuple[int, float]]] = {}
    for key, value in current.items():
        points = {m.step: m.value for m in client.get_metric_history(run_id, key)}
        points[step] = value
        history[key] = sorted(points.items())
    return history
