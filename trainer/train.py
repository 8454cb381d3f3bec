"""The training loop: one function, :func:`train`, run by every rank whatever launched it.

Launchers (:mod:`cluster.launch`: local processes, Ray Train, the DeepSpeed launcher) only set up
the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or the
process group; everything else happens here. Called without either, it trains in one process.

The loop walks epochs, not a fixed step count: a resume on another world size (:mod:`trainer.elastic`)
changes how many steps the rest of an epoch takes, while the step counter, the LR schedule and the
curriculum (by epoch) go on. A SIGTERM stops every rank after the same step with a checkpoint
(:mod:`trainer.preemption`); after each checkpoint rank 0 applies ``train.keep_checkpoints``
(:mod:`trainer.retention`). Metrics stay on the device and are averaged over steps and ranks once per
``tracking.log_every`` steps (:mod:`trainer.window`), so no other step waits for the device or a peer.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch
import torch.distributed as dist

from dataloading.batch import Batch, BatchSource
from dataloading.features import FeatureSettings
from trainer.checkpoint import Checkpointer, read_meta, resolve
from trainer.config import Config
from trainer.data import make_source
from trainer.deepspeed_config import deepspeed_config, input_dtype, restart_warmup
from trainer.deepspeed_env import import_deepspeed
from trainer.elastic import uses_universal
from trainer.health import PlateauWatchdog, chance_loss, embedding_health, grad_norms
from trainer.losses import Stage, pretext_loss, stage_for_epoch
from trainer.models import AVSAModel
from trainer.preemption import Preemption, StopVote
from trainer.tracking import Tracker
from trainer.window import MetricWindow

log = logging.getLogger(__name__)

EXTENSIONS_CACHE = "~/.cache/avsa/torch_extensions"  # DeepSpeed JIT-builds a small op once (~35 s)


@dataclass
class TrainResult:
    """What one rank saw: the last step, the metrics logged (one row per ``tracking.log_every`` steps,
    each stage's last step and the last), the newest checkpoint, the MLflow run, the trained module
    (whole on ZeRO 0–2; ZeRO 3 leaves each rank only its partition), whether a SIGTERM stopped it early,
    and how long loading the checkpoint it resumed from took (seconds)."""

    step: int
    model: torch.nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: str | None = None
    run_id: str | None = None
    preempted: bool = False
    resume_seconds: float = 0.0


def setup_distributed() -> tuple[int, int, torch.device, bool]:
    """Join (or create) the process group → (rank, world size, device, whether we created it).

    Without a launcher the environment of a single process is filled in; DeepSpeed would otherwise
    go looking for MPI.
    """
    deepspeed = import_deepspeed()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser(EXTENSIONS_CACHE))
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
    return dist.get_rank(), dist.get_world_size(), device, created


def memory_gib(device: torch.device) -> float:
    """Peak accelerator memory, or this process's resident memory on CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return psutil.Process().memory_info().rss / 2**30


def make_engine(cfg: Config, device: torch.device, load_universal: bool = False) -> Any:
    """The model in a DeepSpeed engine, with identical initial weights on every rank; ``load_universal``
    when it will resume a ZeRO checkpoint saved on another world size."""
    deepspeed = import_deepspeed()
    torch.manual_seed(cfg.train.seed)
    model = AVSAModel(cfg.model, FeatureSettings.of(cfg.data).channels)
    ds_config = deepspeed_config(cfg, device.type, load_universal=load_universal)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    return engine


def train(
    cfg: Config,
    source: BatchSource | None = None,
    *,
    resume: str | None = None,
    on_step: Callable[[int], None] | None = None,
    on_resume: Callable[[Any], None] | None = None,
) -> TrainResult:
    """Train ``cfg`` on this rank: AVC for ``train.avc_epochs`` epochs, then AVSA for ``train.avsa_epochs``.

    ``source`` defaults to the one ``data.url`` names. ``resume`` is ``latest``, ``auto`` or a
    checkpoint URL (see :func:`trainer.checkpoint.resolve`), saved on any world size. ``on_step(step)``
    runs on every rank after each optimizer step (progress display, fault-injection tests);
    ``on_resume(engine)`` once the checkpoint is loaded, before the first step (checks of the state).
    A checkpoint is written every ``train.checkpoint_every`` steps, after the last step of each stage,
    and after the step a SIGTERM interrupted (then the run returns early with ``preempted``).
    """
    t, tr = cfg.train, cfg.tracking
    if t.keep_checkpoints < 0:
        raise ValueError(f"train.keep_checkpoints must be 0 (keep all) or more; got {t.keep_checkpoints}")
    rank, world_size, device, created_group = setup_distributed()
    if rank == 0:  # first, so a run that went to an unexpected store says so before anything else
        store, why = tr.resolved()
        log.info("tracking: %s (%s)", store or "off", why)
    source = source if source is not None else make_source(cfg, rank, world_size, device)
    epochs = t.avc_epochs + t.avsa_epochs
    dtype = input_dtype(t.precision, device.type)

    checkpointer = Checkpointer(cfg, rank, world_size)
    tag_url = resolve(resume, t.checkpoint_url, cfg.storage) if resume else None
    meta = read_meta(tag_url, cfg.storage) if tag_url else None
    engine = make_engine(cfg, device, meta is not None and uses_universal(meta, world_size))
    resumed = checkpointer.load(engine, tag_url, source) if tag_url else None
    if resumed and on_resume is not None:
        on_resume(engine)
    start = resumed.step if resumed else 0
    tracker = Tracker(cfg, rank, world_size, resumed.run_id if resumed else None)
    result = TrainResult(step=start, model=engine.module, checkpoint=tag_url, run_id=tracker.run_id)
    result.resume_seconds = resumed.seconds if resumed else 0.0
    first_epoch = resumed.epoch if resumed else 0
    total_steps = start + source.batches_left() + len(source) * max(epochs - first_epoch - 1, 0)
    if rank == 0:
        how = f"resumed from {tag_url}" if resumed else "from scratch"
        log.info("training %d steps on %d ranks (%s), %s", total_steps, world_size, device.type, how)

    watchdog = PlateauWatchdog(max(t.plateau_warn_steps, 1), avc_form=t.avc_form)
    if resumed and resumed.watchdog:
        watchdog.load_state_dict(resumed.watchdog)

    checkpointer.bind(engine, source, tracker, watchdog)
    window = MetricWindow(world_size, cfg.data.batch_size * world_size)

    def report(done: int, epoch: int, stage: Stage) -> None:
        """Log the window's means with the learning health; the watchdog reads them."""
        row = window.summary() | {
            "lr": engine.get_lr()[0],
            "tau": t.tau,
            "epoch": epoch,
            "stage_avsa": float(stage == "avsa"),
            "memory_gib": memory_gib(device),
            "chance": chance_loss(stage, cfg.data.batch_size * world_size, cfg.data.viewpoints),
        }
        left = stage in watchdog.left_at
        warning = watchdog.observe(done, stage, row["loss"], row["chance"], row)
        if not left and stage in watchdog.left_at:
            row[f"left_plateau_{stage}"] = watchdog.left_at[stage]
        result.history.append(row)
        tracker.log_metrics(row, done)
        if rank == 0:
            log.info(progress_line(done, total_steps, stage, row))
            if warning and t.plateau_warn_steps > 0:
                log.warning(warning)

    preemption, vote = Preemption(t.preempt_grace_s), StopVote(world_size)
    try:
        with preemption:
            done = start
            for epoch in range(first_epoch, epochs):
                source.set_epoch(epoch)
                stage = stage_for_epoch(epoch, t.avc_epochs)
                if epoch == t.avc_epochs > 0 and source.batches_left() == len(source):
                    restart_warmup(engine)  # AVSA starts: its context transformers have no Adam moments yet
                last_of_stage = epoch in (t.avc_epochs - 1, epochs - 1)
                batches, count = iter(source), source.batches_left()
                for i in range(count):
                    metrics, batch = train_step(engine, batches, stage, cfg=cfg, device=device, dtype=dtype)
                    window.add(metrics)
                    stop = vote.cast(preemption.requested)  # whether any rank got a SIGTERM a step ago
                    done = result.step = done + 1
                    stage_end = stage if last_of_stage and i == count - 1 else None
                    if done % tr.log_every == 0 or done == total_steps or stop or stage_end:
                        report(done, epoch, stage)
                    if done == start + 1 or (tr.samples_every and done % tr.samples_every == 0):
                        tracker.log_samples(batch, done)
                    if stop:
                        preemption.begin()  # this rank's grace period, if a peer's SIGTERM started it
                        result.preempted = True
                    saved = checkpointer.save(done, epoch, stage_end, force=stop)
                    result.checkpoint = saved or result.checkpoint
                    if result.preempted:
                        break
                    if on_step is not None:
                        on_step(done)
                if result.preempted:
                    break
            vote.close()  # the last vote every rank cast
            if result.preempted:
                if rank == 0:
                    log.warning(
                        "preempted: stopped after step %d with checkpoint %s; `--resume auto` continues",
                        done,
                        result.checkpoint,
                    )
                tracker.preempted(done)
            else:
                tracker.finish()
            # Every rank leaves together: a 2-rank gloo run otherwise sometimes aborts at exit.
            dist.barrier()
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        if created_group and dist.is_initialized():
            dist.destroy_process_group()
    return result


def train_step(
    engine: Any,
    batches: Iterator[Batch],
    stage: str,
    *,
    cfg: Config,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[dict[str, torch.Tensor], Batch]:
    """One optimizer step on the next batch → (this rank's metrics as tensors, not read yet; the batch).
    The metrics include ``data_s``, the seconds spent waiting for the batch."""
    t0 = time.perf_counter()
    batch = next(batches, None)
    if batch is None:  # the last logged step says where
        raise RuntimeError(
            "the data source ran out before the end of its epoch (its batches_left() was wrong)"
        )
    video = batch.video.to(device, dtype, non_blocking=True)
    audio = batch.audio.to(device, dtype, non_blocking=True)
    directions = batch.directions.to(device, non_blocking=True)
    data_s = torch.tensor(time.perf_counter() - t0)
    out = engine(video, audio, directions)
    loss, metrics = pretext_loss(out, stage, cfg.train.tau, cfg.train.avc_form)
    metrics |= embedding_health(out, stage, cfg.train.tau, cfg.train.avc_form)
    engine.backward(loss)
    metrics |= grad_norms(engine.module)  # between backward and step: averaged, not yet clipped
    engine.step()
    return metrics | {"data_s": data_s.to(loss.device)}, batch


def progress_line(step: int, total: int, stage: str, row: dict[str, float]) -> str:
    """The console line of a logged row: progress, the pretext figures against chance, and the learning
    health (embedding spread of the sets the stage contrasts, logit margin, total gradient norm)."""
    spread = " ".join(
        f"{name} {row[key]:.2f}"
        for name, key in (("v", "cos_clip_video"), ("a", "cos_clip_audio"))
        if stage == "avc" and key in row
    ) or " ".join(
        f"{name} {row[key]:.2f}" for name, key in (("vp", "cos_video_pred"), ("ap", "cos_audio_pred"))
    )
    return (
        f"step {step}/{total} {stage} loss {row['loss']:.4f} (chance {row['chance']:.3f}) "
        f"avc_acc {row['avc_acc']:.3f} avsa_acc {row['avsa_acc']:.3f} | cos {spread} "
        f"margin {row['margin']:+.2f} |grad| {row['grad_total']:.2g} | {row['clips_per_s']:.1f} clips/s "
        f"data {100 * row['data_wait_fraction']:.0f}%"
    )
