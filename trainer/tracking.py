"""MLflow for a training job: one run per job, written by rank 0 only.

Rank 0 creates (or, on resume, reopens) the run and broadcasts its id, so every rank can name it
(in checkpoint metadata, in logs) while only one process talks to the tracking server. The store is
``tracking.uri``, else MLFLOW_TRACKING_URI, else a local sqlite file; ``off`` turns tracking off
(benchmarks, unit tests).
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from trainer.config import Config
from trainer.credentials import is_secret
from trainer.data import Batch
from trainer.mlflow_ui import training_experiment, ui_url
from trainer.typed_config import flatten

if TYPE_CHECKING:  # mlflow is imported only where tracking is on
    from mlflow.utils.async_logging.run_operations import RunOperations

log = logging.getLogger(__name__)

PREEMPTED = "avsa.preempted"  # "true" while the run waits for `--resume` after a SIGTERM
PREEMPTED_AT = "avsa.preempted_at_step"
_MAX_PENDING = 64  # queued metric batches kept before the oldest are waited on


def public_params(cfg: Config) -> dict[str, str]:
    """The resolved config as dotted MLflow params, without credentials."""
    return {k: str(v) for k, v in flatten(cfg).items() if not is_secret(k)}


def broadcast_from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (unchanged without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class Tracker:
    """The job's MLflow run. Every rank constructs one (it is a collective); only rank 0 logs.

    A resumed job continues in the run its checkpoint names: one run per job, however many attempts.
    """

    def __init__(self, cfg: Config, rank: int, world_size: int, resume_run_id: str | None = None) -> None:
        uri = cfg.tracking.resolved()[0]
        self.enabled = bool(uri)
        self.rank = rank
        self.client = None
        # Futures of the metric batches sent without waiting; finish() waits on them. (The fluent
        # mlflow.flush_async_logging() would resolve MLflow's *default* store, a sqlite mlflow.db in
        # the working directory, rather than this client's server.)
        self._pending: list[RunOperations] = []
        run_id = None
        if self.enabled and rank == 0:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(uri)
            run_id = resume_run_id or self._create_run(cfg, uri, world_size)
            if resume_run_id:  # the interrupted attempt marked it FAILED or KILLED; the job goes on in it
                self.client.update_run(run_id, status="RUNNING")
                if self.client.get_run(run_id).data.tags.get(PREEMPTED) == "true":
                    self.client.set_tag(run_id, PREEMPTED, "false")  # PREEMPTED_AT stays, as history
        self.run_id: str | None = broadcast_from_rank0(run_id)

    @property
    def active(self) -> bool:
        """True on the one process that writes to MLflow."""
        return self.client is not None

    def _create_run(self, cfg: Config, uri: str, world_size: int) -> str:
        from mlflow.entities import Param

        assert self.client is not None
        experiment_id = training_experiment(self.client, cfg.tracking.experiment)
        run = self.client.create_run(
            experiment_id,
            run_name=f"{cfg.model.preset}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={"world_size": str(world_size)},
        )
        params = [Param(k, v) for k, v in public_params(cfg).items()]
        self.client.log_batch(run.info.run_id, params=params)
        if uri.startswith(("http://", "https://")):
            log.info("MLflow run: %s", ui_url(uri, experiment_id, run.info.run_id))
        else:  # a file or database store has no UI of its own to link to
            log.info(
                "MLflow run %s in %s (browse: mlflow ui --backend-store-uri %s)", run.info.run_id, uri, uri
            )
        return run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue metrics for ``step`` without waiting for the server (flushed by :meth:`finish`)."""
        if not self.active:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(v)]
        self._pending.append(self.client.log_batch(self.run_id, metrics=batch, synchronous=False))
        if len(self._pending) > _MAX_PENDING:  # the oldest are long sent: keep the list short
            self._wait(_MAX_PENDING // 2)

    def log_checkpoint(self, url: str, step: int) -> None:
        """Tag the run with its newest checkpoint (what `avsa export --run` and evaluation read)."""
        if self.active:
            self.client.set_tag(self.run_id, "checkpoint.latest", url)
            self.client.set_tag(self.run_id, "checkpoint.step", str(step))

    def log_samples(self, batch: Batch, step: int, count: int = 4) -> None:
        """A figure of ``count`` viewpoints: the middle video frame above its steered-audio features."""
        if not self.active:
            return
        figure = sample_figure(batch, count)
        self.client.log_figure(self.run_id, figure, f"samples/step_{step:08d}.png")
        import matplotlib.pyplot as plt

        plt.close(figure)

    def _wait(self, count: int) -> None:
        """Block until the oldest ``count`` queued metric batches reached the server."""
        done, self._pending = self._pending[:count], self._pending[count:]
        for operations in done:
            operations.wait()

    def tags(self) -> dict[str, str] | None:
        """The run's tags as the server has them now (the evaluation service's markers among them);
        None without tracking."""
        if not self.active:
            return None
        return dict(self.client.get_run(self.run_id).data.tags)

    def preempted(self, step: int) -> None:
        """End the run as KILLED and tagged preempted after ``step`` (not FAILED: a resume continues it)."""
        if self.active:
            self.client.set_tag(self.run_id, PREEMPTED, "true")
            self.client.set_tag(self.run_id, PREEMPTED_AT, str(step))
        self.finish("KILLED")

    def finish(self, status: str = "FINISHED") -> None:
        """Flush the queued metrics to the configured server, then end the run with ``status``."""
        if self.active:
            self._wait(len(self._pending))
            self.client.set_terminated(self.run_id, status)


def sample_figure(batch: Batch, count: int) -> Any:
    """Top row: middle frame of viewpoint crops ``[3, H, W]`` (min-max scaled for display); bottom
    row: channel 0 (W, omnidirectional) of the audio features ``[F mels, T frames]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = [(b, k) for b in range(batch.video.shape[0]) for k in range(batch.video.shape[1])][:count]
    fig, axes = plt.subplots(2, len(views), figsize=(2.5 * len(views), 5), squeeze=False)
    for col, (b, k) in enumerate(views):
        clip = batch.video[b, k].float()
        frame = clip[:, clip.shape[1] // 2].permute(1, 2, 0)
        frame = (frame - frame.min()) / (frame.max() - frame.min()).clamp_min(1e-8)
        az, el = torch.rad2deg(batch.directions[b, k].float()).tolist()
        axes[0, col].imshow(frame.numpy())
        axes[0, col].set_title(f"clip {b} view {k}\naz {az:.0f}° el {el:.0f}°", fontsize=8)
        axes[1, col].imshow(batch.audio[b, k, 0].float().numpy(), origin="lower", aspect="auto")
        axes[1, col].set_xlabel("frame", fontsize=8)
        axes[1, col].set_ylabel("mel", fontsize=8)
        axes[0, col].axis("off")
    fig.tight_layout()
    return fig
