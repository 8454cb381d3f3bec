"""Steered FOA log-mel + intensity-vector features (28 clips x 4 viewpoints x 1 s) vs per-channel scipy."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy.signal
import torch

from dataloading.features import FeatureExtractor
from dataloading.foa import steering_matrix
from dataloading.mel import mel_filterbank

SAMPLE_RATE = 24000
N_FFT, HOP, N_MELS, TOP_DB = 512, 240, 128, 100.0


def baseline(foa: np.ndarray, azimuth: np.ndarray, elevation: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """The straightforward way: for each viewpoint steer in the time domain, then STFT each channel with
    scipy, pool with a numpy mel matmul, convert to dB and compute the intensity vectors.

    ``foa [B, 4, N]``, angles ``[B, K]`` radians, ``fb [n_mels, freq]``; returns ``[B, K, 7, n_mels, T]``.
    """
    matrices = steering_matrix(torch.from_numpy(azimuth), torch.from_numpy(elevation)).numpy()
    window = scipy.signal.get_window("hann", N_FFT)
    out = []
    for b in range(foa.shape[0]):
        per_view = []
        for k in range(azimuth.shape[1]):
            steered = matrices[b, k] @ foa[b]
            specs = []
            for channel in steered:
                padded = np.pad(channel, N_FFT // 2, mode="reflect")
                _, _, z = scipy.signal.stft(
                    padded, nperseg=N_FFT, noverlap=N_FFT - HOP, window=window, boundary=None, padded=False
                )
                specs.append(z * window.sum())  # undo scipy's 1/sum(window) scaling
            spec = np.stack(specs)  # [4, freq, T]
            mel = np.stack([fb @ np.abs(s) for s in spec])
            db = 20.0 * np.log10(np.maximum(mel, 1e-5))
            db = np.maximum(db, db.max() - TOP_DB)
            intensity = np.real(np.conj(spec[0]) * spec[1:])
            energy = np.abs(spec[0]) ** 2 + (np.abs(spec[1:]) ** 2).sum(0) / 3.0 + 1e-8
            iv = np.stack([fb @ (i / energy) for i in intensity])
            per_view.append(np.concatenate((db, iv)))
        out.append(np.stack(per_view))
    return np.stack(out)


def _median_times(
    first: Callable[[], object], second: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Median wall times (seconds) of two functions, run alternately so load changes hit both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in zip((first, second), times, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str]) -> float:
    """Print both timings (median of repeats, seconds) and return baseline time / our time."""
    parser = argparse.ArgumentParser(prog="python -m bench features")
    parser.add_argument("--clips", type=int, default=28)
    parser.add_argument("--viewpoints", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    foa = rng.standard_normal((args.clips, 4, SAMPLE_RATE)).astype(np.float32)
    azimuth = rng.uniform(-np.pi, np.pi, (args.clips, args.viewpoints)).astype(np.float32)
    elevation = rng.uniform(-np.pi / 6, np.pi / 6, (args.clips, args.viewpoints)).astype(np.float32)
    fb = mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS).T.numpy()

    extractor = FeatureExtractor(SAMPLE_RATE, N_FFT, HOP, N_MELS, "slaney", TOP_DB, "logmel_iv")
    device = torch.device(args.device)
    foa_t = torch.from_numpy(foa).to(device).unsqueeze(1)  # one clip, K viewpoints
    az_t, el_t = torch.from_numpy(azimuth).to(device), torch.from_numpy(elevation).to(device)

    def ours() -> torch.Tensor:
        with torch.inference_mode():
            out = extractor(foa_t, az_t, el_t)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    # The two implementations must agree before their timings mean anything.
    reference = baseline(foa, azimuth, elevation, fb)
    np.testing.assert_allclose(ours().cpu().numpy(), reference, atol=2e-2, rtol=1e-3)

    ours_s, base_s = _median_times(ours, lambda: baseline(foa, azimuth, elevation, fb), args.repeats)
    shape = (
        f"{args.clips} clips x {args.viewpoints} viewpoints x 1 s FOA @ {SAMPLE_RATE} Hz -> 7 x {N_MELS} mels"
    )
    print(f"{shape}; torch threads {torch.get_num_threads()}")
    print(f"ours ({device.type}): {ours_s * 1000:.1f} ms")
    print(f"baseline (numpy/scipy per viewpoint, per channel): {base_s * 1000:.1f} ms")
    return base_s / ours_s
