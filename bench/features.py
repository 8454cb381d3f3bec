"""Steered FOA log-mel + intensity-vector features (28 clips x 4 viewpoints x 1 s) vs their floor, one STFT.

The floor is one STFT of each clip's four channels, which every route to these features needs; the
ratio is floor time / our time (goal ≥ 0.4: at most 2.5× the floor). The straightforward per-viewpoint
numpy/scipy implementation is timed too (goal: ours ≥ 5× faster), after both outputs are checked equal.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy.signal
import torch

from dataloading.features import DB_PER_UNIT, FeatureExtractor, stft
from dataloading.foa import steering_matrix
from dataloading.mel import mel_filterbank

SAMPLE_RATE = 24000
N_FFT, HOP, N_MELS, TOP_DB = 512, 240, 128, 100.0


def baseline(foa: np.ndarray, azimuth: np.ndarray, elevation: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """The straightforward way: for each viewpoint steer in the time domain, then STFT each channel with
    scipy, pool with a numpy mel matmul, convert to dB (in the features' 20 dB units) and compute the
    intensity vectors' band means.

    ``foa [B, 4, N]``, angles ``[B, K]`` radians, ``fb [n_mels, freq]``; returns ``[B, K, 7, n_mels, T]``.
    """
    matrices = steering_matrix(torch.from_numpy(azimuth), torch.from_numpy(elevation)).numpy()
    window = scipy.signal.get_window("hann", N_FFT)
    band_mean = fb / fb.sum(1, keepdims=True)
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
            mel = np.stack([fb @ np.abs(s) ** 2 for s in spec])
            db = 10.0 * np.log10(np.maximum(mel, 1e-10))
            db = np.maximum(db, db.max() - TOP_DB) / DB_PER_UNIT
            intensity = np.real(np.conj(spec[0]) * spec[1:])
            energy = np.abs(spec[0]) ** 2 + (np.abs(spec[1:]) ** 2).sum(0) / 3.0 + 1e-8
            iv = np.stack([band_mean @ (i / energy) for i in intensity])
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

    def synced(compute: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        """``compute`` without autograd, returning only once the device has finished it."""

        def run() -> torch.Tensor:
            with torch.inference_mode():
                out = compute()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

        return run

    ours = synced(lambda: extractor(foa_t, az_t, el_t))
    floor = synced(lambda: stft(foa_t, N_FFT, HOP))

    # The two implementations must agree before their timings mean anything: exactly in float64; in
    # float32 a cancellation in the quadratic forms moves a few very quiet bins (< 0.01 % of them).
    reference = baseline(foa.astype(np.float64), azimuth.astype(np.float64), elevation.astype(np.float64), fb)
    with torch.inference_mode():
        exact = extractor(foa_t.double().cpu(), az_t.double().cpu(), el_t.double().cpu()).numpy()
    np.testing.assert_allclose(exact, reference, atol=1e-6, rtol=1e-6)
    off = np.abs(ours().cpu().numpy() - reference) > 1e-2
    assert off.mean() < 1e-4, f"{off.mean():.2e} of the float32 features are off by more than 0.2 dB"

    ours_s, floor_s = _median_times(ours, floor, args.repeats)
    base_s = statistics.median(_wall(lambda: baseline(foa, azimuth, elevation, fb)) for _ in range(3))
    cpu_s = _cpu(ours)
    shape = (
        f"{args.clips} clips x {args.viewpoints} viewpoints x 1 s FOA @ {SAMPLE_RATE} Hz -> 7 x {N_MELS} mels"
    )
    print(f"{shape}; torch threads {torch.get_num_threads()}")
    print(f"floor (one STFT of each clip's 4 channels, {device.type}): {floor_s * 1000:.1f} ms")
    ours_line = f"{ours_s * 1000:.1f} ms wall, {cpu_s * 1000:.1f} ms CPU ({ours_s / floor_s:.2f}× the floor)"
    print(f"ours ({device.type}): {ours_line}")
    speedup = base_s / ours_s
    print(f"numpy/scipy per viewpoint and channel: {base_s * 1000:.1f} ms; ours {speedup:.1f}× (goal ≥ 5×)")
    return floor_s / ours_s


def _wall(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _cpu(fn: Callable[[], object]) -> float:
    """CPU seconds of one call, all threads of this process."""
    start = time.process_time()
    fn()
    return time.process_time() - start
