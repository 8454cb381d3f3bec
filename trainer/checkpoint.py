"""Checkpoints to any storage URL (local or ``s3://``), saved by every rank, resumed on any world size.

Layout under ``train.checkpoint_url`` (the *root*)::

    ROOT/latest                      the newest complete tag, e.g. "step_00001000" (written last)
    ROOT/step_00001000/              one folder (*tag*) per save
        mp_rank_00_model_states.pt   DeepSpeed: module weights and buffers (+ scheduler)
        zero_pp_rank_R_...optim_states.pt   DeepSpeed: rank R's ZeRO optimizer partition
        rank_R.pt                    ours: rank R's RNG states (python, numpy, torch) and module buffers
                                     (BatchNorm statistics differ per rank)
        loader.json                  ours: every rank's loader position, in rank order
        config.yaml                  the resolved config of the run, credentials replaced by markers
        feature_stats.json           the audio features' normalisation statistics (none: used raw)
        meta.json                    step, epoch, world size, MLflow run id, files, and which stage the
                                     checkpoint ends if it is a stage's last step (written after them)

Each rank has DeepSpeed write its files into a private local staging folder, then uploads each file
atomically (:func:`dataloading.storage.upload_atomic`); after a barrier rank 0 writes ``meta.json``
and then the ``latest`` pointer. A run killed at any moment therefore leaves ``latest`` naming a
complete checkpoint, and a half-written tag is simply overwritten by the next save of that step.

Resuming on the saving world size restores everything exactly; on another, :mod:`trainer.elastic`
says what comes back and how (DeepSpeed's universal checkpoint for the ZeRO partitions).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dataloading.batch import BatchSource
from dataloading.config import StorageConfig
from dataloading.feature_stats import STATS_FILE, FeatureStats
from dataloading.storage import filesystem, join, upload_atomic, write_bytes_atomic
from trainer import safe_load
from trainer.config import Config, dump_config
from trainer.elastic import load_resharded

log = logging.getLogger(__name__)

LATEST = "latest"
META = "meta.json"
LOADER = "loader.json"
CONFIG = "config.yaml"


TAG_NAME = re.compile(r"step_\d+")  # what tag_for_step makes


def tag_for_step(step: int) -> str:
    """Tags sort in step order: ``step_00001000``."""
    return f"step_{step:08d}"


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from (dropout, augmentation in this process), as tensors and
    plain values only, so that the weights-only unpickler reads it back (numpy's state is an array)."""
    version, mt, gauss = random.getstate()
    algorithm, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "algorithm": algorithm,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["mt"].tolist()), py["gauss"]))
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["algorithm"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def read_text(url: str, storage: StorageConfig | None = None) -> str | None:
    """The text at ``url``, or None if there is no such object."""
    fs, path = filesystem(url, storage)
    try:
        return fs.cat_file(path).decode()
    except FileNotFoundError:
        return None


def resolve(resume: str, root: str, storage: StorageConfig | None = None) -> str | None:
    """The tag URL to resume from.

    ``resume`` is ``latest`` (the root's newest checkpoint; an error if there is none), ``auto``
    (the same, but None when the root has no checkpoint yet: a fresh start) or a URL: either a tag
    folder or a root, whose ``latest`` is then followed.
    """
    if resume in ("latest", "auto"):
        tag = read_text(join(root, LATEST), storage)
        if tag is None and resume == "latest":
            raise FileNotFoundError(f"--resume latest: no checkpoint under {root} ({LATEST} is missing)")
        return join(root, tag.strip()) if tag is not None else None
    if read_text(join(resume, META), storage) is not None:
        return resume
    tag = read_text(join(resume, LATEST), storage)
    if tag is None:
        raise FileNotFoundError(f"--resume {resume}: neither a checkpoint ({META}) nor a root ({LATEST})")
    return join(resume, tag.strip())


def read_meta(tag_url: str, storage: StorageConfig | None = None) -> dict[str, Any]:
    text = read_text(join(tag_url, META), storage)
    if text is None:
        raise FileNotFoundError(f"{tag_url} is not a complete checkpoint: {META} is missing")
    return json.loads(text)


def read_stats(tag_url: str, storage: StorageConfig | None = None) -> FeatureStats | None:
    """The feature statistics saved with the checkpoint at ``tag_url`` (None: its features were raw)."""
    text = read_text(join(tag_url, STATS_FILE), storage)
    return None if text is None else FeatureStats.from_json(text)


def download(tag_url: str, local_dir: str, storage: StorageConfig | None = None) -> None:
    """Copy every file of a checkpoint tag into ``local_dir``.

    Every rank takes the whole tag, not only the files it will read: which files DeepSpeed reads
    depends on the ZeRO stage and the world size, and the optimizer partitions are small next to
    the time a training run takes to reach a checkpoint.
    """
    fs, path = filesystem(tag_url, storage)
    os.makedirs(local_dir, exist_ok=True)
    for remote in fs.ls(path, detail=False):
        fs.get(remote, os.path.join(local_dir, remote.rstrip("/").rsplit("/", 1)[-1]))


@dataclass
class Resumed:
    """What a loaded checkpoint tells the training loop."""

    step: int
    epoch: int
    run_id: str | None
    world_size: int  # the saving run's
    seconds: float  # from the first byte downloaded to the state restored
    watchdog: dict[str, Any] | None = None  # the plateau watchdog's state, if the run saved one


@dataclass
class _Bound:
    """What :meth:`Checkpointer.save` saves: the engine, the data position, the run, the watchdog."""

    engine: Any
    source: BatchSource
    tracker: Any  # trainer.tracking.Tracker
    watchdog: Any  # trainer.health.PlateauWatchdog


class Checkpointer:
    """Save and load training state for one rank; every rank must call :meth:`save`, :meth:`write`
    and :meth:`load`. :meth:`save` also decides when a checkpoint is due (torchtitan's
    ``save(step, force)``), so the training loop only says which step it finished."""

    def __init__(self, cfg: Config, rank: int, world_size: int) -> None:
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.root = cfg.train.checkpoint_url
        self.storage = cfg.storage
        self._bound: _Bound | None = None

    def bind(self, engine: Any, source: BatchSource, tracker: Any, watchdog: Any) -> None:
        """The training state :meth:`save` writes: ``engine``, ``source``'s position, ``tracker``'s run
        (tagged with each checkpoint) and ``watchdog``'s state."""
        self._bound = _Bound(engine, source, tracker, watchdog)

    def save(self, step: int, epoch: int, stage_end: str | None = None, *, force: bool = False) -> str | None:
        """Write the bound state after ``step`` if a checkpoint is due: every ``train.checkpoint_every``
        steps, at the last step of a stage (``stage_end`` names it), or when ``force``d (a preemption).
        Tags the run with it and applies retention, except after a forced save, whose grace time is
        short. Returns the tag URL, or None when none was due."""
        if not (force or stage_end or step % self.cfg.train.checkpoint_every == 0):
            return None
        bound = self._bound
        if bound is None:
            raise RuntimeError("Checkpointer.save before bind(): nothing to save")
        state = bound.watchdog.state_dict()
        url = self.write(bound.engine, step, epoch, bound.source, bound.tracker.run_id, stage_end, state)
        bound.tracker.log_checkpoint(url, step)
        if self.rank == 0 and self.cfg.train.keep_checkpoints and not force:
            from trainer.retention import apply_retention  # retention reads checkpoints: it imports this

            apply_retention(self.cfg, bound.tracker)
        return url

    def write(
        self,
        engine: Any,
        step: int,
        epoch: int,
        source: BatchSource,
        run_id: str | None,
        stage_end: str | None = None,
        watchdog: dict[str, Any] | None = None,
    ) -> str:
        """Write the state after ``step`` optimizer steps; returns the tag URL once it is committed.

        ``stage_end`` names the curriculum stage whose last step this is (retention keeps those);
        ``watchdog`` is the plateau watchdog's state (:class:`trainer.health.PlateauWatchdog`), kept in
        the metadata, where it also says when each stage's loss left its plateau."""
        tag = tag_for_step(step)
        url = join(self.root, tag)
        staging = tempfile.mkdtemp(prefix=f"avsa-ckpt-r{self.rank}-")
        try:
            local = os.path.join(staging, tag)
            engine.save_checkpoint(staging, tag=tag, save_latest=False)
            own = {
                "rng": rng_state(),
                "step": step,
                "buffers": {k: v.detach().cpu() for k, v in engine.module.named_buffers()},
            }
            torch.save(own, os.path.join(local, f"rank_{self.rank}.pt"))
            if self.rank == 0:
                with open(os.path.join(local, CONFIG), "w") as fh:
                    fh.write(dump_config(self.cfg))  # never the credentials: others read checkpoints
                if source.stats is not None:
                    with open(os.path.join(local, STATS_FILE), "wb") as fh:
                        fh.write(source.stats.to_json())
            files = sorted(os.listdir(local))
            for name in files:
                upload_atomic(os.path.join(local, name), join(url, name), self.storage)
            everyone = all_gather_object((files, source.state_dict()), self.world_size)
            if self.rank == 0:
                positions = json.dumps([state for _, state in everyone]).encode()
                write_bytes_atomic(join(url, LOADER), positions, self.storage)
                meta = {
                    "step": step,
                    "epoch": epoch,
                    "world_size": self.world_size,
                    "run_id": run_id,
                    "stage_end": stage_end,
                    "watchdog": watchdog,
                    "files": sorted({f for rank_files, _ in everyone for f in rank_files} | {LOADER}),
                }
                write_bytes_atomic(join(url, META), json.dumps(meta, indent=1).encode(), self.storage)
                write_bytes_atomic(join(self.root, LATEST), tag.encode(), self.storage)
            barrier()  # save() returning on any rank means the checkpoint is committed
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if self.rank == 0:
            log.info("checkpoint step %d -> %s", step, url)
        return url

    def load(self, engine: Any, tag_url: str, source: BatchSource) -> Resumed:
        """Restore engine, RNG and loader state saved at ``tag_url`` by a run of any world size.

        An engine resuming a ZeRO checkpoint of another world size must have been configured with
        ``checkpoint.load_universal`` (:func:`trainer.elastic.uses_universal` says when)."""
        started = time.perf_counter()
        meta = read_meta(tag_url, self.storage)
        if LOADER not in meta["files"]:
            raise ValueError(
                f"{tag_url} was written by an older trainer (no {LOADER} with the loader positions): it "
                "cannot be resumed; start a new run, or `avsa export` its weights"
            )
        resharded = int(meta["world_size"]) != self.world_size
        tag = tag_url.rstrip("/").rsplit("/", 1)[-1]
        staging = tempfile.mkdtemp(prefix=f"avsa-resume-r{self.rank}-")
        try:
            download(tag_url, os.path.join(staging, tag), self.storage)
            safe_load.verify(os.path.join(staging, tag))  # DeepSpeed unpickles its files in full
            with open(os.path.join(staging, tag, LOADER)) as fh:
                positions = json.load(fh)
            if resharded:
                seed = self.cfg.train.seed
                load_resharded(engine, staging, tag, meta, seed, self.rank, self.world_size)
            else:
                path, _ = engine.load_checkpoint(staging, tag=tag)
                if path is None:
                    raise RuntimeError(f"DeepSpeed could not load the checkpoint at {tag_url}")
                own = safe_load.load(os.path.join(staging, tag, f"rank_{self.rank}.pt"))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not resharded:
            set_rng_state(own["rng"])
            # Buffers (BatchNorm running statistics) are not averaged across ranks like gradients, and
            # DeepSpeed saves rank 0's only: each rank restores its own.
            with torch.no_grad():
                for name, buffer in engine.module.named_buffers():
                    buffer.copy_(own["buffers"][name])
        source.load_state_dict(positions)
        seconds = time.perf_counter() - started
        if self.rank == 0:
            log.info(
                "resumed step %d from %s (saved by %d ranks, now %d) in %.1f s",
                *(meta["step"], tag_url, meta["world_size"], self.world_size, seconds),
            )
        return Resumed(
            step=int(meta["step"]),
            epoch=int(meta["epoch"]),
            run_id=meta.get("run_id"),
            world_size=int(meta["world_size"]),
            seconds=seconds,
            watchdog=meta.get("watchdog"),
        )


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if distributed():
        dist.barrier()


def all_gather_object(obj: Any, world_size: int) -> list[Any]:
    """``obj`` from every rank, in rank order (just ``[obj]`` without a process group)."""
    if not distributed():
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out
