"""Benchmark tasks and metrics on constructed cases with known answers.

The labeled sets are built here in the format :mod:`dataloading.synth.evalsets` writes (FLAC + JSON
in tar shards, manifest): plane waves of class-specific tones at known directions, so a perfect
feature gets every answer and an uninformative one gets chance. Held-out clips are constructed codes
placed in the task context's cache, where the tasks look for the clips they read.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from dataloading.features import FeatureExtractor
from dataloading.foa import direction_vector
from evaluation.datasets import HeldOutClips
from evaluation.metrics import angular_error, confusion_matrix, doa_summary, vector_to_angles
from evaluation.suite import Report, format_table, results_from_metrics
from evaluation.tasks import (
    Context,
    avc_bin,
    avsa_bin,
    classification,
    doa,
    doa_steered,
    pretext,
)
from evaluation.tasks.pairs import scene_folds
from evaluation.tasks.pretext import scene_batches
from tests.helpers import write_classification_set, write_doa_set
from trainer.config import EvalConfig, load_config
from trainer.data import TINY
from trainer.models import AVSAOutput, Embeddings

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


# --- constructed encoders -------------------------------------------------------------------------


class Constant:
    """Embeds every input to the same vector: the answer to 'what does an uninformative feature score?'."""

    def embed_audio(self, x: Tensor) -> Tensor:
        return torch.ones(len(x), 8)

    def embed_video(self, x: Tensor) -> Tensor:
        return torch.ones(len(x), 8)

    def forward(self, video: Tensor, audio: Tensor, directions: Tensor) -> AVSAOutput:
        n, k = video.shape[:2]
        same = Embeddings(*(torch.ones(n, k, 8) for _ in range(4)))
        return AVSAOutput(viewpoints=same, clips=Embeddings(*(torch.ones(n, 8) for _ in range(4))))


class Flat:
    """Every input flattened: perfect where the inputs carry the answer."""

    def __init__(self, audio: nn.Module | None = None) -> None:
        self.audio = audio or nn.Flatten()

    def embed_audio(self, x: Tensor) -> Tensor:
        return self.audio(x.float())

    def embed_video(self, x: Tensor) -> Tensor:
        return x.float().flatten(1)

    def forward(self, video: Tensor, audio: Tensor, directions: Tensor) -> AVSAOutput:
        """Targets and predictions are the clip and viewpoint codes: every pretext choice is right."""
        views = nn.functional.normalize(video.flatten(2).float(), dim=-1)
        clips = nn.functional.normalize(views.mean(1), dim=-1)
        return AVSAOutput(
            viewpoints=Embeddings(views, views, views, views), clips=Embeddings(clips, clips, clips, clips)
        )


class BandEnergy(nn.Module):
    """Mean over time of every (channel, band): a perfect feature for tones of different pitch."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(-1).flatten(1)


class MeanIntensity(nn.Module):
    """Mean band-mean I/E (channels 4..6 of logmel_iv): proportional to the source direction (y, z, x)."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, 4:7].mean((-2, -1))


class FrontIntensity(nn.Module):
    """The steered field's X intensity (channel 6 of logmel_iv): largest when the source is in front."""

    def forward(self, x: Tensor) -> Tensor:
        return x[:, 6:7].mean((-2, -1))


def _context(
    model: object, suite: EvalConfig, feature: str = "logmel", held: HeldOutClips | None = None
) -> Context:
    cfg = load_config(None, {**TINY, "data.feature": feature})
    ctx = Context(model, Constant(), suite, cfg, FeatureExtractor.from_config(cfg.data))  # type: ignore[arg-type]
    if held is not None:
        ctx.cache["held_out"] = held
    return ctx


def _code_clips(clips: int = 96, views: int = 4, per_scene: int = 2, seed: int = 0) -> HeldOutClips:
    """Video and audio of each (clip, viewpoint) carry the same code (cos, sin of a clip angle, then of a
    viewpoint angle): a matching pair is recognisable, a mismatch is not. ``per_scene`` clips per scene."""
    g = torch.Generator().manual_seed(seed)
    clip = torch.rand(clips, 1, generator=g).expand(clips, views) * 2 * math.pi
    view = torch.rand(clips, views, generator=g) * 2 * math.pi
    code = torch.stack([clip.cos(), clip.sin(), view.cos(), view.sin()], -1)
    directions = torch.stack([view - math.pi, torch.zeros_like(view)], -1)
    keys = [f"clip{i:03d}" for i in range(clips)]
    return HeldOutClips(
        code[..., None, None, None],
        code[..., None, None],
        directions,
        keys,
        [f"scene{i // per_scene}" for i in range(clips)],
    )


# --- tasks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [avc_bin, avsa_bin])
def test_pair_tasks_perfect_encoder_near_100_constant_exactly_at_chance(task: object) -> None:
    suite = EvalConfig(clips_url="constructed", probe_epochs=100, hidden=64, resamples=200)
    result = task.run(_context(Flat(), suite, held=_code_clips()))  # type: ignore[attr-defined]
    assert result.task == task.NAME  # type: ignore[attr-defined]
    assert result.scores["model"]["acc"].mean > 0.9
    assert result.scores["random_init"]["acc"].mean == 0.5  # constant input: one answer for every pair
    difference = result.differences["model"]["acc"]
    assert difference.low > 0.3 and difference.groups == 48  # resampled over the 48 scenes
    assert result.chance["acc"] == 0.5
    # Every clip is tested exactly once, as a matching pair and as a mismatch, at each viewpoint.
    assert len(result.items["acc"].groups) == 2 * 96 * 4


def test_scene_folds_and_pretext_batches_never_split_or_share_a_scene() -> None:
    scenes = [f"s{i % 37}" for i in range(200)]  # 37 scenes, 5–6 clips each, interleaved
    folds = scene_folds(scenes, seed=3)
    for scene in set(scenes):
        assert len({folds[i] for i, s in enumerate(scenes) if s == scene}) == 1
    assert 0.3 < folds.mean() < 0.7
    batches = scene_batches(scenes, size=8, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(200))  # every clip once
    for batch in batches:
        assert len({scenes[i] for i in batch}) == len(batch)
    assert (scene_folds(scenes, seed=3) == folds).all() and not (scene_folds(scenes, seed=4) == folds).all()


def test_pretext_perfect_model_at_100_constant_exactly_at_chance() -> None:
    suite = EvalConfig(clips_url="constructed", pretext_batch=8, resamples=200)
    result = pretext.run(_context(Flat(), suite, held=_code_clips(per_scene=1)))
    assert result.scores["model"]["avc_top1"].mean == 1.0
    assert result.scores["model"]["avsa_top1"].mean == 1.0
    assert result.scores["random_init"]["avc_top1"].mean == pytest.approx(1 / 8)  # ties share the credit
    assert result.scores["random_init"]["avsa_top1"].mean == pytest.approx(1 / 4)
    assert result.chance == {"avc_top1": pytest.approx(1 / 8), "avsa_top1": 0.25}
    # Bins of the angle to the chosen viewpoint: a perfect model never chooses a wrong one.
    bins = [m for m in result.scores["model"] if m.startswith("avsa_chosen_")]
    assert len(bins) == 4 and all(result.scores["model"][m].mean == 0 for m in bins)
    assert sum(result.scores["random_init"][m].mean for m in bins) == pytest.approx(0.75, abs=1e-9)


def test_classification_perfect_feature_near_100_constant_at_chance(tmp_path: Path) -> None:
    url = str(tmp_path / "cls")
    write_classification_set(url, per_class=16)
    suite = EvalConfig(classification_url=url, resamples=200)
    result = classification.run(_context(Flat(BandEnergy()), suite))
    assert result.classes == ["tone0", "tone1", "tone2"]
    assert result.scores["model"]["acc"].mean > 0.95
    assert result.scores["logmel_stats"]["acc"].mean > 0.95
    assert result.scores["input_oracle"]["acc"].mean > 0.95
    assert result.scores["random_init"]["acc"].mean == pytest.approx(1 / 3)  # one class for all, balanced
    for method, cm in result.confusion.items():
        assert cm.sum() == 24 and np.trace(cm) / 24 == pytest.approx(result.scores[method]["acc"].mean)
    estimate = result.scores["model"]["acc"]
    assert estimate.low <= estimate.mean <= estimate.high and estimate.groups == 24


@pytest.fixture(scope="module")
def doa_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = str(tmp_path_factory.mktemp("doa"))
    write_doa_set(url, clips=60)
    return url


def test_doa_perfect_feature_accurate_constant_far_off_intensity_exact(doa_url: str) -> None:
    suite = EvalConfig(doa_url=doa_url, probe_epochs=300, hidden=32, resamples=200)
    result = doa.run(_context(Flat(MeanIntensity()), suite, feature="logmel_iv"))
    assert result.directions is not None and len(result.directions) == 48  # two-source clips left out
    assert result.scores["intensity"]["mean_error_deg"].mean < 1.0
    assert result.scores["intensity"]["acc20"].mean == 1.0
    assert result.scores["model"]["mean_error_deg"].mean < 20.0
    assert result.scores["random_init"]["mean_error_deg"].mean > 45.0
    assert result.scores["random_init"]["acc20"].mean < 0.25
    assert result.differences["model"]["mean_error_deg"].high < 0  # lower error, interval below 0
    assert set(result.errors) == {"model", "random_init", "input_oracle", "intensity"}


def test_steered_doa_front_scorer_finds_the_source_constant_does_not(doa_url: str) -> None:
    suite = EvalConfig(doa_url=doa_url, steer_directions=60, resamples=200)
    result = doa_steered.run(_context(Flat(FrontIntensity()), suite, feature="logmel_iv"))
    # A perfect "in front" score errs by at most half the grid spacing (~23° at 60 points).
    assert result.scores["model"]["mean_error_deg"].mean < 15.0
    assert result.scores["model"]["acc20"].mean > 0.9
    assert result.scores["random_init"]["mean_error_deg"].mean > 45.0


@pytest.mark.parametrize("feature", ["logmel", "logmel_iv", "cardioids"])
def test_input_oracle_localises_only_with_features_that_keep_the_sign(doa_url: str, feature: str) -> None:
    """The oracle bounds what the features alone give: log-mel magnitudes cannot say on which side of
    each axis the source is (unsteered) or whether it is in front or behind (steered); the intensity
    vector and the cardioids can, and come near the intensity estimator."""
    suite = EvalConfig(doa_url=doa_url, probe_epochs=300, hidden=32, resamples=200)
    for task in (doa, doa_steered):
        result = task.run(_context(Constant(), suite, feature=feature))
        oracle = result.scores["input_oracle"]["mean_error_deg"].mean
        intensity = result.scores["intensity"]["mean_error_deg"].mean
        if feature == "logmel":
            assert oracle > 60.0, (task.NAME, oracle)
        else:
            assert oracle < intensity + 20.0, (task.NAME, oracle, intensity)


def test_evaluation_is_deterministic_given_its_seed(doa_url: str) -> None:
    suite = EvalConfig(doa_url=doa_url, probe_epochs=50, hidden=16, resamples=100, seed=5)
    first = doa.run(_context(Flat(MeanIntensity()), suite, feature="logmel_iv"))
    again = doa.run(_context(Flat(MeanIntensity()), suite, feature="logmel_iv"))
    assert first.scores == again.scores and first.differences == again.differences


def test_table_shows_intervals_and_differences_and_survives_mlflow_round_trip() -> None:
    suite = EvalConfig(clips_url="constructed", probe_epochs=50, hidden=32, resamples=200)
    result = avsa_bin.run(_context(Flat(), suite, held=_code_clips()))
    report = Report("ckpt", 10, None, [result], 1.0)
    table = format_table({"trained": report})
    assert "avsa_bin acc% ↑" in table and "trained − random init" in table and "[" in table
    back = results_from_metrics(report.metrics())
    for method, values in result.scores.items():
        assert back[0].scores[method]["acc"].mean == pytest.approx(values["acc"].mean)
        assert back[0].scores[method]["acc"].low == pytest.approx(values["acc"].low)
    assert back[0].differences["model"]["acc"].high == pytest.approx(result.differences["model"]["acc"].high)
    assert back[0].chance == {"acc": 0.5}
    assert format_table({"trained": Report("ckpt", 10, None, back, 0.0)}) == table


class Counting(Constant):
    """A constant embedder that counts how often it is asked."""

    calls = 0

    def embed_audio(self, x: Tensor) -> Tensor:
        Counting.calls += 1
        return super().embed_audio(x)


def test_baselines_are_computed_once_for_evaluations_that_share_them(tmp_path: Path) -> None:
    """Random init, the oracle and the classical baselines do not depend on the checkpoint: a second
    checkpoint of the run reuses them and only the model is scored again, with the same results."""
    url = str(tmp_path / "cls")
    write_classification_set(url, per_class=8)
    suite = EvalConfig(classification_url=url, resamples=100)
    shared: dict = {}
    results = []
    for _ in range(2):
        ctx = _context(Flat(BandEnergy()), suite)
        ctx.random_init, ctx.baselines = Counting(), shared
        results.append(classification.run(ctx))
    assert Counting.calls == 2  # train and test features, embedded in the first evaluation only
    assert results[0].scores == results[1].scores
    assert set(shared) == {("classification", m) for m in ("random_init", "input_oracle", "logmel_stats")}
