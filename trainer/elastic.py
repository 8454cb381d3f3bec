"""Resuming a checkpoint on a different number of ranks (2 → 1, 1 → 2, 2 → 3, …; gloo or NCCL).

What comes back, and how:

- **Weights and Adam moments, exactly.** A ZeRO checkpoint (stage 1–3) holds each rank's slice of the
  flat fp32 weights and Adam moments. DeepSpeed's own converter (``ds_to_universal``) rewrites them per
  parameter (``zero/<name>/fp32.pt``, ``exp_avg.pt``, ``exp_avg_sq.pt``, and the step), and an engine
  configured with ``checkpoint.load_universal`` cuts them anew for its own world size: copies, so bit
  for bit (the tests check 0 ulp). Each rank converts its own local copy of the checkpoint (seconds),
  so nothing is written back to storage. Without ZeRO (stage 0) every rank holds the whole optimizer
  state and DeepSpeed loads it on any world size as it is.
- **Step counter, LR schedule, MLflow run**: from the model states file and ``meta.json``, as on the
  same world size.
- **BatchNorm buffers** (running mean and variance; not averaged across ranks like gradients, so each
  rank's drifted apart): every new rank takes the element-wise mean over the saving ranks. For the
  running mean that is exactly the running mean over all ranks' batches (the update is linear and
  every rank made the same number with the same momentum); for the running variance it is the mean of
  the ranks' estimates, which leaves out the spread between their means (small when the ranks see the
  same distribution). Integer buffers (``num_batches_tracked``) are equal on all ranks: rank 0's.
  The rule does not depend on which old rank ids survive, and all new ranks start alike.
- **RNG streams** (dropout) belong to a rank: on another world size every rank is reseeded from
  (``train.seed``, step, rank).
- **The loader position** is world-size independent (:mod:`dataloading.epoch`): the rest of the epoch
  is every sample not consumed yet, each once, split evenly across the new ranks.

The honest trade-off: batches after the change cannot equal an uninterrupted run's at the old world
size (the global batch has another size and other members). What is exact is the state above and the
accounting of samples. A resume on the *same* world size stays exact in everything, batches included.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trainer import safe_load

log = logging.getLogger(__name__)

UNIVERSAL_SUFFIX = "_universal"


def uses_universal(meta: dict[str, Any], world_size: int) -> bool:
    """True when resuming the checkpoint described by ``meta`` on ``world_size`` ranks re-slices ZeRO
    optimizer partitions (the engine must then be configured with ``checkpoint.load_universal``)."""
    partitioned = any("zero_pp_rank_" in name for name in meta["files"])
    return partitioned and int(meta["world_size"]) != world_size


def to_universal(local_root: str, tag: str) -> str:
    """Convert the DeepSpeed checkpoint ``local_root/tag`` with DeepSpeed's ``ds_to_universal``; returns
    the tag of the converted copy beside it. Raises RuntimeError with the converter's last words."""
    out = tag + UNIVERSAL_SUFFIX
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        os.path.join(local_root, tag),
        "--output_folder",
        os.path.join(local_root, out),
        "--num_extract_workers",
        "1",
        "--num_merge_workers",
        "1",
        # A plain data-parallel model has no tensor/pipeline slicing patterns to record: the version
        # key, which this injects, is all the converter needs (see DeepSpeed's universal checkpoint docs).
        "--inject_missing_state",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"ds_to_universal could not convert {tag} (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
        )
    return out


def mean_buffers(saved: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The buffers a new rank takes from the saving ranks' ``saved`` buffers (see the module docstring)."""
    merged = {}
    for name, first in saved[0].items():
        if first.is_floating_point():
            merged[name] = torch.stack([buffers[name] for buffers in saved]).mean(0)
        else:
            merged[name] = first
    return merged


def reseed(seed: int, step: int, rank: int) -> None:
    """Seed Python's, numpy's and torch's global RNGs (CUDA's too) from (seed, step, rank)."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2)
    random.seed(int(state[0]))
    np.random.seed(int(state[1]) % 2**32)
    torch.manual_seed(int(state[0]))


def load_resharded(
    engine: Any, local_root: str, tag: str, meta: dict[str, Any], seed: int, rank: int, world_size: int
) -> None:
    """Load the checkpoint ``local_root/tag``, saved by ``meta["world_size"]`` ranks and checked by
    :func:`trainer.safe_load.verify`, into ``engine`` on this (another) world size: weights, optimizer,
    schedule, BatchNorm buffers by the mean rule, RNGs reseeded. The loader position is the caller's."""
    load_tag = to_universal(local_root, tag) if uses_universal(meta, world_size) else tag
    path, _ = engine.load_checkpoint(local_root, tag=load_tag)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load the converted checkpoint {load_tag}")
    saved = [
        safe_load.load(os.path.join(local_root, tag, f"rank_{r}.pt"))["buffers"]
        for r in range(int(meta["world_size"]))
    ]
    with torch.no_grad():
        merged = mean_buffers(saved)
        for name, buffer in engine.module.named_buffers():
            buffer.copy_(merged[name])
    reseed(seed, int(meta["step"]), rank)
