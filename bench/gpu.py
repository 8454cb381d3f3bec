"""One-shot GPU benchmark: DALI mixed decode + remap crops, features, the paper preset's bf16 step, data wait.

``python -m bench gpu`` on a machine with a CUDA GPU (under 8 minutes on one H200) prints:

- DALI ``mixed`` decode of 28 clips' frame windows straight into K=4 ``remap`` crops each (the loader's
  GPU path, :class:`dataloading.dali_pipeline.GpuCropDecoder`): clips/s and crops/s;
- those crops against the CPU path (DALI CPU decode + ``grid_sample`` crops,
  :func:`dataloading.geometry.crop_views`): max and mean absolute difference in 8-bit levels;
- feature extraction (:class:`dataloading.features.FeatureExtractor`) of 28 clips x 4 viewpoints x 1 s;
- the paper preset's DeepSpeed step (:mod:`trainer.deepspeed_config`, bf16, ZeRO 1) at 28 clips x 4
  viewpoints with ``channels_last`` and ``torch.compile`` each on and off: step time, clips/s and model
  FLOPs utilisation (FLOPs counted by :func:`trainer.flops.training_flops`, over the GPU's dense bf16 peak);
- the data-wait fraction of the real loader (:func:`dataloading.loader.build_loader`, GPU decode) feeding
  the fastest of those steps.

The ``ratio:`` line is the best MFU. Without a GPU it says that it needs one and exits 0 (``ratio: nan``).

A GPU machine may have no network: everything beyond its torch (DALI, DeepSpeed, Ray, webdataset, MLflow and
the rest of the project's dependencies) installs from wheels prepared in advance. On a machine with network,
in this repository (with a Python that has torch, to build DeepSpeed's pure-Python wheel; default .venv)::

    bash bench/gpu_wheels.sh          # -> .whl/ for Python 3.12, Linux x86_64, torch 2.11 (CUDA 13)

then copy the repository with ``.whl/`` to the GPU machine and there, in its Python with torch::

    python -m pip install --no-index --find-links .whl -c .whl/constraints.txt -e .
    python -m bench gpu
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from trainer.flops import embedding_sum, mfu, peak_flops, training_flops

CLIPS, VIEWPOINTS = 28, 4  # per GPU, as in the paper
CLIP_SECONDS = 3.0  # of the synthetic dataset: the loader trims each sample to its window's GOPs anyway


# ----- GPU sections ------------------------------------------------------------------------------------
def _timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, each synchronised with the GPU."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _windows(url: str, cfg: Any, rng: np.random.Generator) -> list[dict[str, Any]]:
    """One batch of samples read from the shards at ``url``: members, a frame window trimmed out of the mp4
    (as the loader does), K random viewpoints and fields of view, and their stacked remap maps."""
    from dataloading.dali_pipeline import trim_window
    from dataloading.geometry import stacked_remap_maps
    from dataloading.schema import SampleMeta
    from dataloading.shards import SampleRef, ShardReader, list_shards

    shards = list_shards(url)
    reader = ShardReader(shards)
    refs = [SampleRef(s, i) for s, shard in enumerate(shards) for i in range(shard.samples)][:CLIPS]
    batch = []
    for ref in refs:
        _, members = reader.read(ref)
        meta = SampleMeta.from_json(members["json"])
        frames = round(meta.duration_s * meta.fps)
        start = int(rng.integers(frames - cfg.frames + 1))
        mp4, first = trim_window(members["mp4"], start, cfg.frames, 1, meta.fps)
        azimuth = torch.from_numpy(rng.uniform(-math.pi, math.pi, VIEWPOINTS)).float()
        elevation = torch.from_numpy(rng.uniform(-0.5, 0.5, VIEWPOINTS)).float()
        fov = torch.from_numpy(rng.uniform(*np.radians(cfg.fov_deg), VIEWPOINTS)).float()
        size = (meta.video.width, meta.video.height)
        batch.append(
            {
                "members": members,
                "mp4": mp4,
                "window": (first, 1),
                "views": (azimuth, elevation, fov),
                "maps": stacked_remap_maps(azimuth, elevation, fov, cfg.crop_size, size),
            }
        )
    return batch


def decode_and_crops(url: str, cfg: Any, device: torch.device) -> None:
    """DALI mixed decode + remap throughput, and its crops against the CPU decode + grid_sample path."""
    from dataloading.batch import to_uint8
    from dataloading.dali_pipeline import GpuCropDecoder, SampleDecoder
    from dataloading.geometry import crop_views, unstack_remapped

    batch = _windows(url, cfg, np.random.default_rng(0))
    gpu = GpuCropDecoder(cfg.frames, len(batch), device.index)
    feeds = ([b["mp4"] for b in batch], [b["window"] for b in batch], [b["maps"] for b in batch])
    decoded = gpu.decode(*feeds)  # the first run also builds DALI's decoder state
    seconds = _timed(lambda: gpu.decode(*feeds), 10)
    rate = len(batch) / seconds
    print(
        f"DALI mixed decode + remap: {rate:.0f} clips/s, {rate * VIEWPOINTS:.0f} crops/s ({len(batch)} "
        f"clips x {VIEWPOINTS} crops of {cfg.frames}x{cfg.crop_size}x{cfg.crop_size} from 512x256 VP9)"
    )
    cpu = SampleDecoder(cfg.sample_rate, cfg.frames, video=True, max_batch=len(batch))
    length = round(cfg.audio_seconds * cfg.sample_rate)
    decoded_cpu = cpu.decode(
        [b["members"]["flac"] for b in batch], [(0, length)] * len(batch), feeds[0], feeds[1]
    )
    worst, total = 0, 0.0
    for b, remapped, (_, frames) in zip(batch, decoded, decoded_cpu, strict=True):
        reference = to_uint8(crop_views(frames, *b["views"], cfg.crop_size)).int()
        difference = (unstack_remapped(remapped, VIEWPOINTS).cpu().int() - reference).abs()
        worst, total = max(worst, int(difference.max())), total + float(difference.float().mean())
    print(
        f"remap crops vs CPU grid_sample crops: max |diff| {worst}, mean {total / len(batch):.3f} "
        "(8-bit levels)"
    )


def features(cfg: Any, device: torch.device) -> None:
    """Time of the configured audio features of one batch on the GPU."""
    from dataloading.features import FeatureExtractor

    extractor = FeatureExtractor.from_config(cfg)
    foa = torch.randn(CLIPS, 1, 4, round(cfg.audio_seconds * cfg.sample_rate), device=device)
    azimuth = (torch.rand(CLIPS, VIEWPOINTS, device=device) * 2 - 1) * math.pi
    elevation = (torch.rand(CLIPS, VIEWPOINTS, device=device) - 0.5) * 1.0
    with torch.inference_mode():
        extractor(foa, azimuth, elevation)
        seconds = _timed(lambda: extractor(foa, azimuth, elevation), 20)
    print(
        f"features ({cfg.feature}, {cfg.n_mels} mels) of {CLIPS} clips x {VIEWPOINTS} viewpoints x 1 s: "
        f"{seconds * 1000:.2f} ms"
    )


def _channels_last(video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs in channels-last layouts (per viewpoint: NDHWC video, NHWC audio). The weights keep theirs:
    ZeRO flattens the parameters into one buffer; cuDNN follows the input's layout."""
    b, k = video.shape[:2]
    video = video.flatten(0, 1).contiguous(memory_format=torch.channels_last_3d).unflatten(0, (b, k))
    audio = audio.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (b, k))
    return video, audio


class PaperStep:
    """The paper preset's DeepSpeed step on ``cfg`` (bf16 on a GPU; inputs of :attr:`dtype`), optionally
    compiled."""

    def __init__(self, cfg: Any, device: torch.device, compiled: bool) -> None:
        from dataloading.features import FeatureSettings
        from trainer.deepspeed_config import deepspeed_config, resolve_precision
        from trainer.deepspeed_env import import_deepspeed
        from trainer.models import AVSAModel

        deepspeed = import_deepspeed()

        torch.manual_seed(cfg.train.seed)
        model = AVSAModel(cfg.model, FeatureSettings.of(cfg.data).channels).to(device)
        self.engine, *_ = deepspeed.initialize(
            model=model, model_parameters=model.parameters(), config=deepspeed_config(cfg, device.type)
        )
        if compiled:
            self.engine.compile()
        self.tau = cfg.train.tau
        bf16 = resolve_precision(cfg.train.precision, device.type) == "bf16"
        self.dtype = torch.bfloat16 if bf16 else torch.float32  # of the inputs

    def __call__(self, video: torch.Tensor, audio: torch.Tensor, directions: torch.Tensor) -> None:
        from trainer.losses import pretext_loss

        loss, _ = pretext_loss(self.engine(video, audio, directions), "avsa", self.tau, "trunks")
        self.engine.backward(loss)
        self.engine.step()


def paper_steps(cfg: Any, device: torch.device, steps: int) -> tuple[float, PaperStep | None]:
    """Step time, clips/s and MFU with channels_last and torch.compile on and off; returns the best MFU
    and the fastest step (None if every variant failed; a failure is printed and the others still run)."""
    from dataloading.features import FeatureSettings
    from dataloading.synth.batches import SyntheticSource
    from trainer.models import AVSAModel

    source = SyntheticSource(cfg.data, 1).batch(0, 0)
    video, audio = (x.to(device, torch.bfloat16) for x in (source.video, source.audio))
    directions = source.directions.to(device)
    shapes = [tuple(video.shape), tuple(audio.shape), tuple(directions.shape)]
    channels = FeatureSettings.of(cfg.data).channels
    flops = training_flops(lambda: AVSAModel(cfg.model, channels), shapes, embedding_sum)
    name = torch.cuda.get_device_name(device)
    peak = peak_flops(name)
    print(
        f"paper preset step, bf16, ZeRO {cfg.train.zero_stage}, {CLIPS} clips x {VIEWPOINTS} viewpoints: "
        f"{flops / 1e12:.2f} TFLOP per step; {name}: "
        + (f"{peak / 1e12:.0f} TFLOP/s dense bf16 peak" if peak else "peak unknown (no MFU)")
    )
    print(f"  {'channels_last':>13} {'compile':>7} {'warm-up s':>9} {'step ms':>8} {'clips/s':>8} {'MFU':>6}")
    on = {False: "off", True: "on"}
    best: tuple[float, float, PaperStep | None] = (math.inf, math.nan, None)
    for layout in (False, True):
        inputs = (*_channels_last(video, audio), directions) if layout else (video, audio, directions)
        for compiled in (False, True):
            try:
                step = PaperStep(cfg, device, compiled)
                started = time.perf_counter()
                for _ in range(3):  # compiles (when on) and lets cuDNN pick its algorithms
                    step(*inputs)
                torch.cuda.synchronize()
                warm = time.perf_counter() - started
                seconds = _timed(lambda step=step, inputs=inputs: step(*inputs), steps)
            except Exception as exc:  # e.g. a compiler error: report it, measure the other variants
                print(
                    f"  {on[layout]:>13} {on[compiled]:>7} failed: {type(exc).__name__}: {exc}".splitlines()[
                        0
                    ]
                )
                continue
            util = mfu(flops, seconds, peak) if peak else math.nan
            print(
                f"  {on[layout]:>13} {on[compiled]:>7} {warm:9.1f} {seconds * 1000:8.1f} "
                f"{CLIPS / seconds:8.1f} {util:6.1%}"
            )
            if seconds < best[0]:
                best = (seconds, util, step)  # the previous best's engine is freed here
            del step
            torch.cuda.empty_cache()
    return best[1], best[2]


def data_wait(cfg: Any, url: str, device: torch.device, step: PaperStep, batches: int) -> None:
    """The fraction of the time the real loader (DALI mixed decode, remap crops, features on the GPU)
    keeps ``step`` waiting, over ``batches`` batches after the first."""
    from dataloading.loader import build_loader

    loader = build_loader(cfg.data, device=device, batches_per_epoch=batches + 1)
    waited = stepped = 0.0
    items = iter(loader)
    for i in range(batches + 1):
        started = time.perf_counter()
        batch = next(items)
        video, audio = (x.to(step.dtype) for x in (batch.video, batch.audio))
        torch.cuda.synchronize()
        fed = time.perf_counter()
        step(video, audio, batch.directions)
        torch.cuda.synchronize()
        if i:  # the first batch also starts the workers
            waited, stepped = waited + fed - started, stepped + time.perf_counter() - fed
    print(
        f"real loader ({cfg.data.workers} workers, GPU decode) feeding that step: data wait "
        f"{waited / (waited + stepped):.1%} over {batches} steps "
        f"({(waited + stepped) / batches * 1000:.0f} ms a step)"
    )


def run_on_gpu(args: argparse.Namespace) -> float:
    """Every section on the current CUDA device; returns the best MFU."""
    from cluster.processes import free_port
    from dataloading.synth.samples import write_dataset
    from trainer.config import load_config
    from trainer.train import setup_distributed

    started = time.perf_counter()
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    setup_distributed()  # a one-rank process group, as DeepSpeed needs one
    device = torch.device("cuda", torch.cuda.current_device())
    with tempfile.TemporaryDirectory() as url:
        write_dataset(url, [CLIPS] * 2, CLIP_SECONDS, (512, 256), seed=1)
        cfg = load_config(None, {"data.url": url, "data.workers": args.workers, "train.precision": "bf16"})
        print(
            f"dataset: {2 * CLIPS} synthetic {CLIP_SECONDS:g} s clips written in "
            f"{time.perf_counter() - started:.0f} s"
        )
        decode_and_crops(url, cfg.data, device)
        features(cfg.data, device)
        best, step = paper_steps(cfg, device, args.steps)
        if step is not None:
            data_wait(cfg, url, device, step, args.batches)
    print(f"total {time.perf_counter() - started:.0f} s")
    return best


def main(argv: list[str]) -> float:
    parser = argparse.ArgumentParser(
        prog="python -m bench gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per step variant")
    parser.add_argument("--batches", type=int, default=20, help="loader batches for the data-wait fraction")
    parser.add_argument(
        "--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 2)), help="loader workers"
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "python -m bench gpu needs a CUDA GPU, and torch sees none here (torch.cuda.is_available() is "
            "False): nothing measured. Run it on a GPU machine; `python -m bench gpu --help` says how to "
            "install there without network."
        )
        return math.nan
    return run_on_gpu(args)
