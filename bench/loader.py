"""Training loader (DALI decode, K crops, steered features) vs a per-item PyAV/numpy/scipy loader, clips/s."""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import math
import os
import resource
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np
import scipy.signal
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from dataloading.config import DataConfig
from dataloading.foa import steering_matrix
from dataloading.loader import build_loader
from dataloading.mel import mel_filterbank
from dataloading.schema import SampleMeta
from dataloading.shards import ShardReader, list_shards
from dataloading.synth.samples import write_dataset
from dataloading.viewpoints import random_viewpoints


class ReferenceStyle(Dataset):
    """A reference-style loader: per item, PyAV decode of the clip's frame window (after a seek), numpy
    gnomonic crops per viewpoint and frame, and per viewpoint a time-domain steer and per-channel scipy
    STFT, mel and dB (log-mel features). The same work as the loader, done the straightforward way."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.reader = ShardReader(list_shards(cfg.url))
        self.refs = [(s, i) for s, shard in enumerate(self.reader.shards) for i in range(shard.samples)]
        self.fb = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels).T.numpy()

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        from dataloading.shards import SampleRef

        cfg = self.cfg
        rng = np.random.default_rng(item)
        _, members = self.reader.read(SampleRef(*self.refs[item]))
        meta = SampleMeta.from_json(members["json"])
        fps = meta.fps
        n_clip = round(meta.duration_s * fps)
        start = int(rng.integers(max(1, n_clip - cfg.frames + 1)))
        with av.open(io.BytesIO(members["mp4"])) as container:
            stream = container.streams.video[0]
            # Seek to the keyframe before the window (short GOPs make that cheap), decode up to its end.
            container.seek(round(start / fps / stream.time_base), stream=stream)
            window = (f for f in container.decode(stream) if f.time * fps > start - 0.5)
            frames = [f.to_ndarray(format="rgb24") for f in itertools.islice(window, cfg.frames)]
        video = np.stack(frames).astype(np.float32) / 255.0  # [T, H, W, 3]
        audio, rate = sf.read(io.BytesIO(members["flac"]), dtype="float32")
        a0 = max(0, round((start / fps - 0.25) * rate))
        length = round(cfg.audio_seconds * rate)
        foa = np.pad(audio[a0 : a0 + length].T, ((0, 0), (0, max(0, a0 + length - len(audio)))))
        az, el = random_viewpoints(cfg.viewpoints, rng, math.radians(30), math.radians(36))
        fov = rng.uniform(*np.radians(cfg.fov_deg), cfg.viewpoints)
        crops = np.stack(
            [_numpy_crop(video, az[k], el[k], fov[k], cfg.crop_size) for k in range(cfg.viewpoints)]
        )
        features = np.stack([_scipy_logmel(foa, az[k], el[k], cfg, self.fb) for k in range(cfg.viewpoints)])
        return crops, features


def _numpy_crop(video: np.ndarray, az: float, el: float, fov: float, size: int) -> np.ndarray:
    """Gnomonic crop ``[T, size, size, 3]`` of equirect frames ``[T, H, W, 3]`` by numpy bilinear lookup."""
    t = np.tan(fov / 2.0)
    u = ((np.arange(size) + 0.5) * 2.0 / size - 1.0) * t
    uu, vv = np.meshgrid(u, u)
    rays = np.stack((np.ones_like(uu), -uu, -vv), -1)
    rot = steering_matrix(float(az), float(el), dtype=torch.float64).numpy()[[3, 1, 2]][:, [3, 1, 2]]
    world = rays @ rot
    lon = np.arctan2(world[..., 1], world[..., 0])
    lat = np.arctan2(world[..., 2], np.hypot(world[..., 0], world[..., 1]))
    height, width = video.shape[1:3]
    x = ((0.5 - lon / (2 * math.pi)) % 1.0) * width - 0.5
    y = np.clip((0.5 - lat / math.pi) * height - 0.5, 0, height - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x1, y1 = (x0 + 1) % width, np.minimum(y0 + 1, height - 1)
    x0 %= width
    out = []
    for frame in video:
        top = frame[y0, x0] * (1 - fx) + frame[y0, x1] * fx
        bottom = frame[y1, x0] * (1 - fx) + frame[y1, x1] * fx
        out.append(top * (1 - fy) + bottom * fy)
    return np.stack(out)


def _scipy_logmel(foa: np.ndarray, az: float, el: float, cfg: DataConfig, fb: np.ndarray) -> np.ndarray:
    """Steer FOA ``[4, N]`` in the time domain, then per channel scipy STFT, mel, dB: ``[4, n_mels, T]``."""
    steered = steering_matrix(float(az), float(el), dtype=torch.float64).numpy() @ foa
    window = scipy.signal.get_window("hann", cfg.n_fft)
    out = []
    for channel in steered:
        padded = np.pad(channel, cfg.n_fft // 2, mode="reflect")
        _, _, z = scipy.signal.stft(
            padded,
            nperseg=cfg.n_fft,
            noverlap=cfg.n_fft - cfg.hop,
            window=window,
            boundary=None,
            padded=False,
        )
        out.append(20.0 * np.log10(np.maximum(fb @ np.abs(z * window.sum()), 1e-5)))
    db = np.stack(out)
    return np.maximum(db, db.max() - cfg.top_db)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (loader workers), in seconds."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _throughput(batches: Iterable[object], clips_per_batch: int, warmup: int = 1) -> tuple[float, float]:
    """(clips/s of wall time after ``warmup`` batches, clips per CPU-second over the whole run).

    The second counts the workers too (read once they have exited) and barely depends on what else
    the machine runs, so it estimates the throughput of an idle machine: ×cores.
    """
    cpu = _cpu_seconds()
    count, total, start = 0, 0, time.perf_counter()
    for i, _ in enumerate(batches):
        if i == warmup:
            start, count = time.perf_counter(), 0
        count += clips_per_batch
        total += clips_per_batch
    wall = count / (time.perf_counter() - start)
    del batches  # shut the workers down so their CPU time is counted
    return wall, total / (_cpu_seconds() - cpu)


def main(argv: list[str]) -> float:
    parser = argparse.ArgumentParser(prog="python -m bench loader", description=__doc__)
    parser.add_argument("--clips", type=int, default=64, help="clips in the dataset")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--width", type=int, default=512, help="equirect width (height is half)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", help="dataset folder to reuse (written there first if it has no shards)")
    args = parser.parse_args(argv)
    # The workers own the cores; intra-op threads in the main process would only spin against them.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.data or scratch
        if not list(Path(root).glob("*.tar")):
            start = time.perf_counter()
            sizes = [16] * (args.clips // 16) + ([args.clips % 16] if args.clips % 16 else [])
            write_dataset(root, sizes, args.seconds, (args.width, args.width // 2), seed=1)
            print(f"dataset written in {time.perf_counter() - start:.1f} s")
        # The baseline computes the 4 log-mels: ours computes the same features for the ratio, and its
        # default (logmel_iv, 3 more channels) is printed beside.
        default = DataConfig(
            url=root, batch_size=args.batch_size, workers=args.workers, viewpoint_sampler="mix"
        )
        cfg = dataclasses.replace(default, feature="logmel")
        reference = ReferenceStyle(cfg)
        print(
            f"{len(reference)} clips, K={cfg.viewpoints} T={cfg.frames} "
            f"{cfg.crop_size}x{cfg.crop_size} crops, {cfg.n_mels} mels, batch {args.batch_size}, "
            f"{args.workers} workers, {os.cpu_count()} CPUs"
        )
        figures = {
            "ours (DALI, grid_sample, 1 STFT/clip)": _throughput(
                build_loader(cfg, device="cpu"), args.batch_size
            ),
            "baseline (PyAV, numpy, scipy STFTs)": _throughput(
                DataLoader(
                    reference, args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True
                ),
                args.batch_size,
            ),
        }
        figures[f"ours, default {default.feature}"] = _throughput(
            build_loader(default, device="cpu"), args.batch_size
        )
        if torch.cuda.is_available():
            name = "ours on GPU (DALI mixed + remap)"
            figures[name] = _throughput(build_loader(cfg, device="cuda"), args.batch_size)
    print(f"{'':40s} {'clips/s':>9s} {'clips/CPU-s':>12s}")
    for name, (wall, per_cpu) in figures.items():
        print(f"{name:40s} {wall:9.1f} {per_cpu:12.2f}")
    (ours, ours_cpu), (base, base_cpu) = list(figures.values())[:2]
    print(f"ratio per CPU-second (idle-machine estimate): {ours_cpu / base_cpu:.2f}")
    return ours / base
