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
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from dataloading.batch import Batch
from trainer.config import Config
from trainer.credentials import is_secret
from trainer.mlflow_ui import training_experiment, ui_url
from trainer.outbox import Outbox, quick_http_failures, with_retries
from trainer.typed_config import flatten

log = logging.getLogger(__name__)

PREEMPTED = "avsa.preempted"  # "true" while the run waits for `--resume` after a SIGTERM
PREEMPTED_AT = "avsa.preempted_at_step"


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


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached right now (what needs an answer from it must wait)."""


class Tracker:
    """The job's MLflow run. Every rank constructs one (it is a collective); only rank 0 logs, through
    an :class:`~trainer.outbox.Outbox`, so that no step waits on the server and no outage ends the job.

    A resumed job continues in the run its checkpoint names: one run per job, however many attempts.
    """

    def __init__(self, cfg: Config, rank: int, world_size: int, resume_run_id: str | None = None) -> None:
        uri = cfg.tracking.resolved()[0]
        self.rank, self.flush_timeout_s = rank, cfg.tracking.flush_timeout_s
        self.client: Any = None
        self.outbox: Outbox | None = None
        self.backlog: Path | None = None  # where undelivered records went at the end, if anywhere
        run_id = None
        if uri and rank == 0:
            from mlflow.tracking import MlflowClient

            quick_http_failures()
            self.client = MlflowClient(uri)
            # The run must exist before the first step (its id goes into every checkpoint): a server
            # that is down now is waited for, as long as the end of a run would wait for it.
            run_id = with_retries(
                lambda: self._open_run(cfg, uri, world_size, resume_run_id),
                self.flush_timeout_s,
                "opening the run",
            )
            self.outbox = Outbox(
                self.client, run_id, uri, Path(cfg.tracking.backlog_dir), cfg.tracking.backlog_memory
            )
        self.run_id: str | None = broadcast_from_rank0(run_id)

    @property
    def active(self) -> bool:
        """True on the one process that writes to MLflow."""
        return self.outbox is not None

    def _open_run(self, cfg: Config, uri: str, world_size: int, resume_run_id: str | None) -> str:
        if not resume_run_id:
            return self._create_run(cfg, uri, world_size)
        # The interrupted attempt marked it FAILED or KILLED; the job goes on in it.
        self.client.update_run(resume_run_id, status="RUNNING")
        if self.client.get_run(resume_run_id).data.tags.get(PREEMPTED) == "true":
            self.client.set_tag(resume_run_id, PREEMPTED, "false")  # PREEMPTED_AT stays, as history
        return resume_run_id

    def _create_run(self, cfg: Config, uri: str, world_size: int) -> str:
        from mlflow.entities import Param

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
        """Queue metrics for ``step`` (non-finite values left out); never waits for the server."""
        if self.outbox is not None:
            values = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
            self.outbox.put({"op": "metrics", "step": step, "ts": int(time.time() * 1000), "values": values})

    def log_checkpoint(self, url: str, step: int) -> None:
        """Tag the run with its newest checkpoint (what `avsa export --run` and evaluation read)."""
        if self.outbox is not None:
            self.outbox.put({"op": "tag", "key": "checkpoint.latest", "value": url})
            self.outbox.put({"op": "tag", "key": "checkpoint.step", "value": str(step)})

    def log_samples(self, batch: Batch, step: int, count: int = 4) -> None:
        """A figure of ``count`` viewpoints: the middle video frame above its steered-audio features."""
        if self.outbox is None:
            return
        import matplotlib.pyplot as plt

        figure = sample_figure(batch, count)
        path = self.outbox.file(f"step_{step:08d}.png")
        figure.savefig(path)
        plt.close(figure)
        self.outbox.put({"op": "artifact", "file": str(path), "dir": "samples"})

    def tags(self) -> dict[str, str] | None:
        """The run's tags as the server has them now (the evaluation service's markers among them);
        None without tracking. Raises :class:`TrackingUnavailable` at once while the server is down."""
        if self.outbox is None:
            return None
        if self.outbox.down_since is not None:
            raise TrackingUnavailable(f"tracking server {self.outbox.uri} is unreachable")
        return dict(self.client.get_run(self.run_id).data.tags)

    def preempted(self, step: int) -> None:
        """End the run as KILLED and tagged preempted after ``step`` (not FAILED: a resume continues it)."""
        if self.outbox is not None:
            self.outbox.put({"op": "tag", "key": PREEMPTED, "value": "true"})
            self.outbox.put({"op": "tag", "key": PREEMPTED_AT, "value": str(step)})
        self.finish("KILLED")

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` after delivering what is queued, waiting at most
        ``tracking.flush_timeout_s``; what the server did not take by then is left in a backlog file,
        named in a warning, for `avsa tracking replay`."""
        if self.outbox is None:
            return
        outbox, self.outbox = self.outbox, None
        outbox.put({"op": "end", "status": status})
        self.backlog = outbox.close(self.flush_timeout_s)
        if self.backlog is not None:
            log.warning(
                "tracking: server %s still unreachable after %.0f s; the run's last %d records are in %s: "
                "deliver them with `avsa tracking replay %s`",
                outbox.uri,
                self.flush_timeout_s,
                outbox.left,
                self.backlog,
                self.backlog,
            )


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
