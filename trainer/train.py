"""The training loop: one function, :func:`train`, run by every rank whatever launched it.

Launchers (:mod:`cluster.launch`: local processes, Ray Train, the DeepSpeed launcher) only set up
the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or the
process group; everything else happens here. Called without either, it trains in one process.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
import torch
import torch.distributed as dist

from dataloading.features import CHANNELS
from trainer.checkpoint import Checkpointer, resolve
from trainer.config import Config
from trainer.data import BatchSource, make_source
from trainer.deepspeed_config import deepspeed_config, resolve_precision
from trainer.deepspeed_env import import_deepspeed
from trainer.losses import pretext_loss, stage_for_epoch
from trainer.models import AVSAModel
from trainer.tracking import Tracker

log = logging.getLogger(__name__)

LOG_EVERY = 10  # steps between console lines (MLflow gets every step)
EXTENSIONS_CACHE = "~/.cache/avsa/torch_extensions"  # DeepSpeed JIT-builds a small op once (~35 s)


@dataclass
class TrainResult:
    """What one rank saw: the last step, per-step metrics, the newest checkpoint, the MLflow run and
    the trained module (whole on ZeRO 0–2; ZeRO 3 leaves each rank only its partition)."""

    step: int
    model: torch.nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint: str | None = None
    run_id: str | None = None


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


def mean_over_ranks(values: dict[str, torch.Tensor], world_size: int) -> dict[str, float]:
    """Average scalar tensors over ranks in one all-reduce (gloo has no AVG, so SUM / world size)."""
    stacked = torch.stack([v.detach().float() for v in values.values()])
    if world_size > 1:
        dist.all_reduce(stacked)
    return dict(zip(values, (stacked / world_size).tolist(), strict=True))


def train(
    cfg: Config,
    source: BatchSource | None = None,
    *,
    resume: str | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``cfg`` on this rank: AVC for ``train.avc_epochs`` epochs, then AVSA for ``train.avsa_epochs``.

    ``source`` defaults to the one ``data.url`` names. ``resume`` is ``latest``, ``auto`` or a
    checkpoint URL (see :func:`trainer.checkpoint.resolve`). ``on_step(step, metrics)`` runs on every
    rank after each optimizer step (progress display, fault-injection tests). A checkpoint is
    written every ``train.checkpoint_every`` steps and after the last.
    """
    deepspeed = import_deepspeed()
    rank, world_size, device, created_group = setup_distributed()
    t = cfg.train
    source = source or make_source(cfg, rank, world_size, device)
    steps_per_epoch = t.steps_per_epoch or len(source)
    total_steps = (t.avc_epochs + t.avsa_epochs) * steps_per_epoch
    clips_per_step = cfg.data.batch_size * world_size
    dtype = torch.bfloat16 if resolve_precision(t.precision, device.type) == "bf16" else torch.float32

    torch.manual_seed(t.seed)  # identical initial weights on every rank
    model = AVSAModel(cfg.model, CHANNELS[cfg.data.feature])
    ds_config = deepspeed_config(cfg, device.type)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    checkpointer = Checkpointer(cfg, rank, world_size)
    tag_url = resolve(resume, t.checkpoint_url, cfg.storage) if resume else None
    resumed = checkpointer.load(engine, tag_url, source) if tag_url else None
    start = resumed.step if resumed else 0
    tracker = Tracker(cfg, rank, world_size, resumed.run_id if resumed else None)
    result = TrainResult(step=start, model=engine.module, checkpoint=tag_url, run_id=tracker.run_id)
    if rank == 0:
        how = f"resumed from {tag_url}" if resumed else "from scratch"
        log.info("training %d steps on %d ranks (%s), %s", total_steps, world_size, device.type, how)

    batches = None
    try:
        for step in range(start, total_steps):
            epoch = step // steps_per_epoch
            if batches is None or step % steps_per_epoch == 0:
                source.set_epoch(epoch)
                batches = iter(source)
            stage = stage_for_epoch(epoch, t.avc_epochs)

            t0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                raise RuntimeError(f"the data source ran out in epoch {epoch} after {step} steps")
            video = batch.video.to(device, dtype, non_blocking=True)
            audio = batch.audio.to(device, dtype, non_blocking=True)
            directions = batch.directions.to(device, non_blocking=True)
            t_data = time.perf_counter() - t0

            out = engine(video, audio, directions)
            loss, metrics = pretext_loss(out, stage, t.tau)
            engine.backward(loss)
            engine.step()

            metrics = mean_over_ranks(metrics, world_size)  # the all-reduce also waits for the step
            dt, done = time.perf_counter() - t0, step + 1
            metrics |= {
                "lr": engine.get_lr()[0],
                "epoch": epoch,
                "stage_avsa": float(stage == "avsa"),
                "clips_per_s": clips_per_step / dt,
                "data_wait_fraction": t_data / dt,
                "memory_gib": memory_gib(device),
            }
            result.step = done
            result.history.append(metrics)
            tracker.log_metrics(metrics, done)
            if step == start or step % steps_per_epoch == 0:
                tracker.log_samples(batch, done)
            if rank == 0 and (done % LOG_EVERY == 0 or done == total_steps):
                log.info(
                    "step %d/%d %s loss %.4f avc_acc %.3f avsa_acc %.3f %.1f clips/s data %.0f%%",
                    *(done, total_steps, stage, metrics["loss"], metrics["avc_acc"], metrics["avsa_acc"]),
                    *(metrics["clips_per_s"], 100 * metrics["data_wait_fraction"]),
                )
            if done % t.checkpoint_every == 0 or done == total_steps:
                result.checkpoint = checkpointer.save(engine, done, epoch, source, tracker.run_id)
                tracker.log_checkpoint(result.checkpoint, done)
            if on_step is not None:
                on_step(done, metrics)
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
