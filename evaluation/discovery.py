"""Finding checkpoints to evaluate, from what training records in MLflow.

A training run tags itself with ``checkpoint.latest`` (the newest tag URL, ``ROOT/step_…``) every
time it saves (:meth:`trainer.tracking.Tracker.log_checkpoint`). The tag only names the newest
checkpoint, so the service lists the checkpoint root ``ROOT`` and takes every complete checkpoint
(its ``meta.json`` exists, written after all its files) whose ``meta.json`` names this run: a root
shared by several runs yields each run only its own checkpoints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from dataloading.config import StorageConfig
from dataloading.storage import filesystem, join
from evaluation.markers import Marker, marker_key
from trainer.checkpoint import read_meta

LATEST_TAG = "checkpoint.latest"
TAG_NAME = re.compile(r"step_\d+")


@dataclass
class Checkpoint:
    """One saved checkpoint of a tracked run and its evaluation marker (None: not started)."""

    run_id: str
    experiment_id: str
    step: int
    url: str
    marker: Marker | None

    @property
    def state(self) -> str:
        """``queued``, ``running``, ``stale`` (an interrupted run, to redo), ``done`` or ``failed``."""
        if self.marker is None:
            return "queued"
        return "stale" if self.marker.stale() else self.marker.state


def tracked_runs(client: MlflowClient) -> list[Run]:
    """Every active run, in any experiment, that recorded a checkpoint."""
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    runs: list[Run] = []
    for start in range(0, len(experiments), 100):  # search_runs takes a bounded list of experiments
        token = None
        while True:
            page = client.search_runs(
                experiments[start : start + 100],
                filter_string=f"tags.`{LATEST_TAG}` LIKE '%'",
                max_results=1000,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                break
    return runs


def checkpoints_of(run: Run, storage: StorageConfig | None = None) -> list[Checkpoint]:
    """The run's complete checkpoints under the root its ``checkpoint.latest`` tag points into, by step."""
    root = run.data.tags[LATEST_TAG].rstrip("/").rsplit("/", 1)[0]
    fs, path = filesystem(root, storage)
    found = []
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if not TAG_NAME.fullmatch(name):
            continue
        url = join(root, name)
        try:
            meta = read_meta(url, storage)
        except FileNotFoundError:
            continue  # still being written (or abandoned mid-save): not a checkpoint yet
        except ValueError:
            # Unreadable metadata: a broken checkpoint of this root, to be recorded as a failure.
            meta = {"run_id": run.info.run_id, "step": int(name.removeprefix("step_"))}
        if meta.get("run_id") == run.info.run_id:
            step = int(meta["step"])
            tag = run.data.tags.get(marker_key(step))
            marker = Marker.from_tag(tag) if tag else None
            found.append(Checkpoint(run.info.run_id, run.info.experiment_id, step, url, marker))
    return sorted(found, key=lambda c: c.step)


def discover(client: MlflowClient, storage: StorageConfig | None = None) -> list[Checkpoint]:
    """Every checkpoint of every tracked run, oldest run first, then by step."""
    runs = sorted(tracked_runs(client), key=lambda r: r.info.start_time)
    return [c for run in runs for c in checkpoints_of(run, storage)]
