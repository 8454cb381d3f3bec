"""Training steps/s from the replay cache vs from the shard loader: real train(), tiny preset, 1 rank, CPU.

Both runs train the same model for the same steps through :func:`trainer.train.train` (no tracking) on a
synthetic shard dataset written here: the baseline reads the shards every epoch with ``data.workers``
loader workers, ours reads the batches that ``data.cache_passes`` loader epochs left in the replay cache.
The cache is built before its run and timed apart. A rate is steps per second between the ``on_step``
callbacks after the warm-up steps, leaving out the steps that end a stage (their checkpoint costs both
runs the same).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from dataloading.dataset_stats import shared_stats
from dataloading.replay import replay_source
from dataloading.synth.samples import write_dataset
from trainer.config import Config, load_config
from trainer.train import setup_distributed, train

WARMUP_STEPS = 3  # the first steps pay for worker start-up and the first allocations


def cpu_seconds(process: psutil.Process) -> float:
    """CPU time of this process and of its live children (loader workers), in seconds."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a child that just ended
            total += sum(p.cpu_times()[:2])
    return total


def machine_busy() -> float:
    """CPU seconds every process of the machine has used since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


@dataclass
class Run:
    """One training run's figures over its counted steps."""

    rate: float  # steps per second
    cpu: float  # CPU seconds per step, loader workers included
    wait: float  # fraction of the time the loop waited for data
    others: float  # cores that other processes of the machine kept busy meanwhile


def measure(cfg: Config) -> Run:
    """Train ``cfg`` and time the steps after the warm-up, leaving out the stage ends (checkpoints)."""
    process = psutil.Process()
    marks: list[tuple[int, float, float, float]] = []

    def mark(step: int) -> None:
        marks.append((step, time.perf_counter(), cpu_seconds(process), machine_busy()))

    result = train(cfg, on_step=mark)
    per_epoch = len(marks) // (cfg.train.avc_epochs + cfg.train.avsa_epochs)
    stage_ends = {cfg.train.avc_epochs * per_epoch, len(marks)}
    counted = [
        (t - marks[i - 1][1], cpu - marks[i - 1][2])
        for i, (step, t, cpu, _) in enumerate(marks)
        if i >= WARMUP_STEPS and step not in stage_ends
    ]
    wall, cpu = (sum(column) for column in zip(*counted, strict=True))
    (_, t0, ours0, busy0), (_, t1, ours1, busy1) = marks[WARMUP_STEPS - 1], marks[-1]
    waits = [row["data_wait_fraction"] for row in result.history if "data_wait_fraction" in row]
    return Run(
        len(counted) / wall,
        cpu / len(counted),
        statistics.fmean(waits) if waits else float("nan"),
        max(busy1 - busy0 - (ours1 - ours0), 0.0) / (t1 - t0),
    )


def main(argv: list[str]) -> float:
    """Print both rates and the cache's build time; return replay / loader steps per second."""
    parser = argparse.ArgumentParser(prog="python -m bench replay", description=__doc__)
    parser.add_argument("--clips", type=int, default=192, help="clips in the dataset")
    parser.add_argument("--seconds", type=float, default=2.0, help="clip length")
    parser.add_argument("--width", type=int, default=256, help="equirect width (height is half)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="loader worker processes")
    parser.add_argument("--passes", type=int, default=4, help="data.cache_passes")
    parser.add_argument("--avc-epochs", type=int, default=2)
    parser.add_argument("--avsa-epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, interleaved; medians reported")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    parser.add_argument("--data", help="dataset folder to reuse (written there first if it has no shards)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="avsa-bench-replay-") as tmp:
        folder = Path(tmp)
        shards = args.data or str(folder / "shards")
        if not list(Path(shards).glob("*.tar")):
            started = time.perf_counter()
            sizes = [16] * (args.clips // 16) + ([args.clips % 16] if args.clips % 16 else [])
            write_dataset(shards, sizes, args.seconds, (args.width, args.width // 2), seed=1)
            print(f"dataset written in {time.perf_counter() - started:.1f} s")
        overrides: dict[str, Any] = {
            "model.preset": "tiny",
            "data.url": shards,
            "data.batch_size": args.batch_size,
            "data.viewpoints": 4,
            "data.frames": 4,
            "data.crop_size": 64,
            "data.n_mels": 64,
            "data.workers": args.workers,
            "train.avc_epochs": args.avc_epochs,
            "train.avsa_epochs": args.avsa_epochs,
            "train.checkpoint_every": 10**9,
            "tracking.uri": "off",
        }
        loader_cfg = load_config(None, overrides | {"train.checkpoint_url": str(folder / "ckpt-loader")})
        replay_cfg = load_config(
            None,
            overrides
            | {
                "train.checkpoint_url": str(folder / "ckpt-replay"),
                "data.cache_passes": args.passes,
                "data.cache_dir": str(folder / "replay"),
            },
        )
        setup_distributed()  # one group for every run (train() then leaves it alone)
        started = time.perf_counter()
        stats = shared_stats(loader_cfg.data, None, 0)
        print(f"feature statistics in {time.perf_counter() - started:.1f} s (shared by both runs)")
        started = time.perf_counter()
        source = replay_source(replay_cfg.data, None, 0, 1, "cpu", stats=stats)
        build_s = time.perf_counter() - started
        cache = source.cache
        del source
        runs: dict[str, list[Run]] = {"loader": [], "replay": []}
        for _ in range(args.repeats):  # interleaved: load from other work hits both alike
            for name, cfg in (("loader", loader_cfg), ("replay", replay_cfg)):
                runs[name].append(measure(cfg))
    d = loader_cfg.data
    steps = (args.avc_epochs + args.avsa_epochs) * (len(cache) // d.batch_size)
    print(
        f"tiny preset, B={d.batch_size} clips x K={d.viewpoints} viewpoints, {d.frames} frames of "
        f"{d.crop_size}x{d.crop_size}, {d.n_mels} mels, {d.feature}; {len(cache)} clips of "
        f"{args.seconds} s at {args.width}x{args.width // 2}; {steps} steps ({args.avc_epochs} AVC + "
        f"{args.avsa_epochs} AVSA epochs), 1 rank, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, {d.workers} loader workers"
    )
    print(
        f"replay cache: {len(cache)} clips x {cache.passes} passes, {cache.nbytes / 1e6:.0f} MB, built in "
        f"{build_s:.1f} s ({len(cache) * cache.passes / build_s:.1f} clips/s)"
    )
    median = {name: statistics.median(r.rate for r in rs) for name, rs in runs.items()}
    for name, rs in runs.items():
        rate = median[name]
        print(
            f"{name:>6}: {rate:.2f} steps/s ({rate * 60:.0f} steps/min, {rate * d.batch_size:.1f} clips/s), "
            f"{statistics.median(r.cpu for r in rs):.2f} CPU-s per step, waiting for data "
            f"{100 * statistics.median(r.wait for r in rs):.0f} % of the time; other work on the machine: "
            f"{statistics.median(r.others for r in rs):.2f} cores"
            + (f"; runs: {', '.join(f'{r.rate:.2f}' for r in rs)}" if args.repeats > 1 else "")
        )
    return median["replay"] / median["loader"]
