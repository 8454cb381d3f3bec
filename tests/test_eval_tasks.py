"""Benchmark tasks and metrics on constructed cases with known answers.

The labeled sets are built here in the format :mod:`dataloading.synth.evalsets` writes (FLAC + JSON
in tar shards, manifest): plane waves of class-specific tones at known directions, so a perfect
feature gets every answer and an uninformative one gets chance.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dataloading.foa import direction_vector, encode_plane_wave
from dataloading.storage import join, write_bytes_atomic
from dataloading.synth.evalsets import flac_bytes, write_shards
from evaluation.encoders import Encoders
from evaluation.metrics import angular_error, confusion_matrix, doa_summary, vector_to_angles
from evaluation.tasks import Context, Suite, avc_bin, avsa_bin, classification, doa
from trainer.config import load_config
from trainer.data import TINY, Batch

RATE = 24000
SECONDS = 0.25
TONES_HZ = (400.0, 1500.0, 5000.0)


def _plane_wave_clip(signal: np.ndarray, az: float, el: float, rng: np.random.Generator) -> np.ndarray:
    foa = encode_plane_wave(torch.from_numpy(signal), az, el).numpy()
    foa = foa + 0.01 * rng.standard_normal(foa.shape)
    return foa * (0.9 / np.abs(foa).max())


def _manifest(url: str, kind: str, splits: dict[str, list[dict]], **extra: object) -> None:
    manifest = {"kind": kind, "sample_rate": RATE, "seconds": SECONDS, **extra}
    manifest["splits"] = {name: {"shards": shards} for name, shards in splits.items()}
    write_bytes_atomic(join(url, "manifest.json"), json.dumps(manifest).encode())


def write_classification_set(url: str, per_class: int = 12, seed: int = 0) -> None:
    """Classes are tones (with harmonics) from random directions; test gets half as many clips."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SECONDS * RATE)) / RATE
    splits = {}
    for part, count in (("train", per_class), ("test", per_class // 2)):
        samples = []
        for label, f0 in enumerate(TONES_HZ):
            for i in range(count):
                wave = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) / h for h in (1, 2, 3))
                az, el = rng.uniform(-np.pi, np.pi), rng.uniform(-0.5, 0.7)
                meta = {"label": f"tone{label}", "label_index": label, "split": part}
                flac = flac_bytes(_plane_wave_clip(wave, az, el, rng), RATE)
                samples.append((f"{part}_{label}_{i:04d}", {"flac": flac, "json": json.dumps(meta).encode()}))
        splits[part] = write_shards(url, f"cls-{part}", iter(samples), None)
    _manifest(url, "classification", splits, classes=[f"tone{i}" for i in range(len(TONES_HZ))])


def write_doa_set(url: str, clips: int = 40, seed: int = 0) -> None:
    """Noise plane waves at random directions; every fifth clip has a second source (left out by the task)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(clips):
        count = 2 if i % 5 == 4 else 1
        foa, sources = 0.0, []
        for _ in range(count):
            az, el = rng.uniform(-np.pi, np.pi), rng.uniform(-0.5, 0.7)
            foa = foa + _plane_wave_clip(rng.standard_normal(int(SECONDS * RATE)), az, el, rng)
            sources.append({"azimuth_deg": math.degrees(az), "elevation_deg": math.degrees(el)})
        meta = {"sources": sources}
        samples.append(
            (f"doa_{i:05d}", {"flac": flac_bytes(foa * 0.45, RATE), "json": json.dumps(meta).encode()})
        )
    _manifest(url, "doa", {"test": write_shards(url, "doa-test", iter(samples), None)})


# --- metrics -------------------------------------------------------------------------------------


def _err_deg(a: tuple[float, float], b: tuple[float, float]) -> float:
    rad = [torch.tensor(math.radians(v), dtype=torch.float64) for v in (*a, *b)]
    return math.degrees(float(angular_error(*rad)))


def test_angular_error_on_known_angles() -> None:
    assert _err_deg((179, 0), (-179, 0)) == pytest.approx(2.0)  # across the ±180° seam
    assert _err_deg((350, 10), (-10, 10)) == pytest.approx(0.0, abs=1e-9)  # same direction, other turn
    assert _err_deg((0, 90), (123, 90)) == pytest.approx(0.0, abs=1e-9)  # azimuth is moot at a pole
    assert _err_deg((0, 0), (180, 0)) == pytest.approx(180.0)
    assert _err_deg((0, 0), (90, 0)) == pytest.approx(90.0)
    assert _err_deg((10, 80), (190, 80)) == pytest.approx(20.0)  # over the pole, not around it
    assert _err_deg((0, 0), (0, -30)) == pytest.approx(30.0)


angles = st.tuples(st.floats(-4 * math.pi, 4 * math.pi), st.floats(-math.pi / 2, math.pi / 2))


@settings(max_examples=200, deadline=None)
@given(angles, angles, st.floats(-math.pi, math.pi))
def test_angular_error_is_a_rotation_invariant_metric(a: tuple, b: tuple, turn: float) -> None:
    t = [torch.tensor(v, dtype=torch.float64) for v in (*a, *b)]
    err = float(angular_error(*t))
    assert 0 <= err <= math.pi + 1e-12
    assert err == pytest.approx(float(angular_error(t[2], t[3], t[0], t[1])), abs=1e-9)  # symmetric
    # Turning both directions about the vertical axis, or adding full turns, changes nothing.
    assert err == pytest.approx(float(angular_error(t[0] + turn, t[1], t[2] + turn, t[3])), abs=1e-9)
    assert err == pytest.approx(float(angular_error(t[0] + 2 * math.pi, t[1], t[2], t[3])), abs=1e-9)
    dot = float((direction_vector(t[0], t[1]) * direction_vector(t[2], t[3])).sum())
    assert math.cos(err) == pytest.approx(dot, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(angles)
def test_vector_to_angles_inverts_direction_vector(a: tuple) -> None:
    az, el = torch.tensor(a[0], dtype=torch.float64), torch.tensor(a[1], dtype=torch.float64)
    back = vector_to_angles(3.0 * direction_vector(az, el))  # any length
    assert float(angular_error(*back, az, el)) < 1e-6


def test_doa_summary_and_confusion_matrix() -> None:
    summary = doa_summary(torch.deg2rad(torch.tensor([0.0, 10.0, 20.0, 30.0])))
    assert summary["mean_error_deg"] == pytest.approx(15.0)
    assert summary["acc20"] == pytest.approx(0.75)  # 20° itself counts as within
    cm = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]  # row = true class


# --- tasks on constructed encoders -----------------------------------------------------------------


class Noise(nn.Module):
    """An encoder that ignores its input: the answer to 'what does an uninformative feature score?'."""

    def __init__(self, seed: int, dim: int = 16) -> None:
        super().__init__()
        self.dim, self.generator = dim, torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(len(x), self.dim, generator=self.generator)


class BandEnergy(nn.Module):
    """Mean over time of every (channel, band): a perfect feature for tones of different pitch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(-1).flatten(1)


class MeanIntensity(nn.Module):
    """Mean mel(I/E) (channels 4..6 of logmel_iv): proportional to the source direction (y, z, x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 4:7].mean((-2, -1))


def _context(audio: nn.Module, video: nn.Module, suite: Suite, feature: str = "logmel") -> Context:
    cfg = load_config(None, {**TINY, "data.feature": feature})
    cpu = torch.device("cpu")
    return Context(Encoders(audio, video, cfg, cpu), Encoders(Noise(1), Noise(2), cfg, cpu), suite)


def _code_batches(batches: int, clips: int = 8, views: int = 2, seed: int = 0) -> list[Batch]:
    """Video and audio of each (clip, viewpoint) carry the same code (cos, sin of a clip angle, then of a
    viewpoint angle): with identity encoders a matching pair is recognisable, a mismatch is not."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        clip = torch.rand(clips, 1, generator=g).expand(clips, views) * 2 * math.pi
        view = torch.rand(clips, views, generator=g) * 2 * math.pi
        code = torch.stack([clip.cos(), clip.sin(), view.cos(), view.sin()], -1)
        out.append(Batch(video=code[..., None, None, None], audio=code[..., None, None], directions=view))
    return out


@pytest.mark.parametrize("task", [avc_bin, avsa_bin])
def test_pair_tasks_perfect_encoder_near_100_random_encoder_at_chance(
    task: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("evaluation.tasks.pairs.held_out_batches", lambda *a, **k: _code_batches(16))
    suite = Suite(probe_epochs=100, hidden=64)
    result = task.run(_context(nn.Flatten(), nn.Flatten(), suite))  # type: ignore[attr-defined]
    assert result.task == task.NAME  # type: ignore[attr-defined]
    assert result.scores["model"]["acc"] > 0.9
    assert 0.4 < result.scores["random_init"]["acc"] < 0.6  # 256 test pairs: chance ± 3 std


def test_classification_perfect_feature_near_100_noise_at_chance(tmp_path: Path) -> None:
    url = str(tmp_path / "cls")
    write_classification_set(url, per_class=16)
    suite = Suite(classification_url=url, probe_epochs=100)
    result = classification.run(_context(BandEnergy(), Noise(3), suite))
    assert result.classes == ["tone0", "tone1", "tone2"]
    assert result.scores["model"]["acc"] > 0.95
    assert result.scores["logmel_stats"]["acc"] > 0.95
    assert result.scores["random_init"]["acc"] < 0.7  # chance is 1/3 over 24 test clips
    for method, cm in result.confusion.items():
        assert cm.sum() == 24 and np.trace(cm) / 24 == pytest.approx(result.scores[method]["acc"])


def test_doa_intensity_baseline_exact_on_plane_waves_and_noise_far_off(tmp_path: Path) -> None:
    url = str(tmp_path / "doa")
    write_doa_set(url, clips=60)
    suite = Suite(doa_url=url, probe_epochs=300, hidden=32)
    result = doa.run(_context(MeanIntensity(), Noise(3), suite, feature="logmel_iv"))
    assert result.directions is not None and len(result.directions) == 24  # 48 single-source, odd half
    assert result.scores["intensity"]["mean_error_deg"] < 1.0
    assert result.scores["intensity"]["acc20"] == 1.0
    assert result.scores["model"]["mean_error_deg"] < 20.0
    assert result.scores["random_init"]["mean_error_deg"] > 45.0
    assert set(result.errors) == {"model", "random_init", "intensity"}
