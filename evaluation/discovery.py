"""Finding checkpoints to evaluate, from what training records in MLflow.

A training run tags itself with ``checkpoint.latest`` (the newest tag URL, ``ROOT/step_…``) every
time it saves (:meth:`trainer.tracking.Tracker.log_checkpoint`). The tag only names the newest
checkpoint, so the service lists the checkpoint root ``ROOT`` and takes every complete checkpoint
(its ``meta.json`` exists, written after all its files) whose ``meta.json`` names this run: a root
shared by several runs yields each run only its own checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from dataloading.config import StorageConfig
from dataloading.storage import filesystem, join
from evaluation.markers import Marker, marker_key
from trainer.checkpoint import TAG_NAME, read_meta

log = logging.getLogger(__name__)

LATEST_TAG = "checkpoint.latest"


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


def tracked_runs(client: MlflowClient, experiments: Sequence[str] = ()) -> list[Run]:
    """Every active run that recorded a checkpoint, in the named experiments (all when none)."""
    if experiments:
        found = {name: client.get_experiment_by_name(name) for name in experiments}
        unknown = sorted(name for name, e in found.items() if e is None)
        if unknown:
            raise ValueError(f"no experiment named {', '.join(unknown)} on {client.tracking_uri}")
        experiment_ids = [e.experiment_id for e in found.values() if e is not None]
    else:
        active = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
        experiment_ids = [e.experiment_id for e in active]
    runs: list[Run] = []
    for start in range(0, len(experiment_ids), 100):  # search_runs takes a bounded list of experiments
        token = None
        while True:
            page = client.search_runs(
                experiment_ids[start : start + 100],
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


# (run id, reason) pairs already reported: a service sweeps every minute, and says it once.
_reported_unreadable: set[tuple[str, str]] = set()


def discover(
    client: MlflowClient, storage: StorageConfig | None = None, experiments: Sequence[str] = ()
) -> list[Checkpoint]:
    """Every checkpoint of every tracked run (of ``experiments``; all when empty), oldest run first,
    then by step.

    A run whose checkpoint root cannot be listed (deleted, no credentials for its bucket, storage
    down) is logged with the reason and left out of this sweep; the other runs are not held up.
    """
    runs = sorted(tracked_runs(client, experiments), key=lambda r: r.info.start_time)
    found = []
    for run in runs:
        try:
            found.extend(checkpoints_of(run, storage))
        except Exception as exc:  # s3fs passes botocore's own errors through, not only OSError
            reason = f"{type(exc).__name__}: {exc}"
            if (run.info.run_id, reason) not in _reported_unreadable:
                _reported_unreadable.add((run.info.run_id, reason))
                log.warning(
                    "run %s: cannot list its checkpoints at %s (%s); skipped until it can; check the "
                    "storage settings (--storage.* or AWS_* variables) of this service",
                    run.info.run_id,
                    run.data.tags[LATEST_TAG],
                    reason,
                )
    return found
