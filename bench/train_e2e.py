"""Training steps/s end to end (real train(), shard loader, MLflow, checkpoints) vs the engine step alone.

The baseline runs the same DeepSpeed step on the same batches, read into memory beforehand.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import cycle
from pathlib import Path

import torch

from cluster.stack import Stack, free_stack_config
from dataloading.dataset_stats import shared_stats
from dataloading.loader import build_loader
from dataloading.synth.samples import write_dataset
from trainer.config import Config, load_config
from trainer.deepspeed_config import input_dtype
from trainer.losses import stage_for_epoch
from trainer.train import make_engine, setup_distributed, train, train_step

WARMUP_STEPS = 3  # the first steps pay for worker start-up and the first figure


def engine_only(cfg: Config, steps: int) -> float:
    """Steps/s of the DeepSpeed step alone on ``steps`` of the run's own batches, read beforehand."""
    device = torch.device("cpu")
    loader = build_loader(
        cfg.data, storage=cfg.storage, device=device, stats=shared_stats(cfg.data, cfg.storage, 0)
    )
    batches = [batch for _, batch in zip(range(steps), cycle(loader), strict=False)]
    engine = make_engine(cfg, device)
    dtype = input_dtype(cfg.train.precision, device.type)
    stage = stage_for_epoch(0, cfg.train.avc_epochs)
    stream = iter(batches)
    for done in range(WARMUP_STEPS):
        train_step(engine, stream, stage, cfg, device, dtype, 0, done)
    start = time.perf_counter()
    for done in range(WARMUP_STEPS, steps):
        train_step(engine, stream, stage, cfg, device, dtype, 0, done)
    return (steps - WARMUP_STEPS) / (time.perf_counter() - start)


def end_to_end(cfg: Config) -> float:
    """Steps/s of ``train(cfg)`` after its warm-up steps, on the wall clock between steps."""
    times: list[float] = []
    train(cfg, on_step=lambda step: times.append(time.perf_counter()))
    return (len(times) - WARMUP_STEPS) / (times[-1] - times[WARMUP_STEPS - 1])


def main(argv: list[str]) -> float:
    """Print both rates; return end to end / engine alone (goal ≥ 0.9)."""
    parser = argparse.ArgumentParser(prog="python -m bench train_e2e", description=__doc__)
    parser.add_argument("--steps", type=int, default=40, help="training steps (one epoch)")
    parser.add_argument("--clips", type=int, default=64, help="clips in the dataset")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="avsa-bench-e2e-") as tmp:
        folder = Path(tmp)
        write_dataset(str(folder / "shards"), [16] * (args.clips // 16), seconds=2.0)
        stack = Stack(free_stack_config(folder / "stack"))
        stack.up()
        try:
            cfg = load_config(
                None,
                {
                    "model.preset": "tiny",
                    "data.url": str(folder / "shards"),
                    "data.batch_size": args.batch_size,
                    "data.workers": args.workers,
                    "data.resampled": True,
                    "train.steps_per_epoch": args.steps,
                    "train.avc_epochs": 1,
                    "train.avsa_epochs": 0,
                    "train.checkpoint_every": args.steps // 2,
                    "train.checkpoint_url": str(folder / "ckpt"),
                    "tracking.uri": stack.client_env()["MLFLOW_TRACKING_URI"],
                    "tracking.experiment": "bench-train-e2e",
                },
            )
            setup_distributed()  # one group for both measurements (train() then leaves it alone)
            alone = engine_only(cfg, args.steps)
            whole = end_to_end(cfg)
        finally:
            stack.down()
    print(
        f"tiny preset, paper inputs, batch {args.batch_size}, {args.workers} loader workers, {args.steps} "
        f"steps, a checkpoint every {args.steps // 2}, metrics every {cfg.tracking.log_every} steps to MLflow"
    )
    print(
        f"engine step alone, batches in memory: {alone:.2f} steps/s ({alone * args.batch_size:.1f} clips/s)"
    )
    print(
        f"train() end to end:                   {whole:.2f} steps/s ({whole * args.batch_size:.1f} clips/s)"
    )
    return whole / alone
