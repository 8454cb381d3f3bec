"""The SELD evaluation task on a hand-built STARSS23-format tree of plane-wave tones: windows that are
each window's own features, a classical baseline that localises, and every method scored, paired,
written out as DCASE CSVs and tabled."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dataloading.dcase import CLASSES, parse_labels
from dataloading.features import FeatureExtractor
from evaluation.datasets import read_seld_split
from evaluation.encoders import random_init
from evaluation.metrics import angular_error
from evaluation.suite import Report, format_table
from evaluation.tasks import REFERENCE, Context, seld
from tests.helpers import write_starss_tree
from trainer.config import EvalConfig, load_config
from trainer.data import TINY


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("starss")
    return root, write_starss_tree(root, train=3, test=2, seconds=6.0)


def test_reading_keeps_labels_and_splits(tree: tuple[Path, dict]) -> None:
    root, truth = tree
    train = read_seld_split(str(root), "dev-train", 24000)
    test = read_seld_split(str(root), "dev-test", 24000)
    assert [r.stem.split("/")[0] for r in train] == ["dev-train-sony"] * 3
    assert [r.stem.split("/")[0] for r in test] == ["dev-test-sony"] * 2
    for r in train + test:
        assert r.events == truth[r.stem]
        assert r.frames == 60 and r.foa.shape == (4, 6 * 24000)


def test_each_window_is_the_features_of_its_own_audio(tree: tuple[Path, dict]) -> None:
    root, _ = tree
    (recording, *_) = read_seld_split(str(root), "dev-test", 24000)
    extractor = FeatureExtractor(n_mels=32, feature="logmel_iv")
    seconds = 0.32
    windows = seld.frame_windows(extractor, recording, seconds)
    assert windows.shape == (60, 7, 32, extractor.frames(7680))
    for frame in (10, 33, 50):
        centre = round((frame + 0.5) * 2400)  # samples
        first = centre - 16 * 240  # the window's first STFT frame is centred 16 hops before
        own = extractor(recording.foa[:, first : first + 7680].double()).float()
        # the STFT's reflect padding differs at a window's own edges only
        torch.testing.assert_close(windows[frame][..., 2:-2], own[..., 2:-2], atol=1e-3, rtol=1e-3)


def test_intensity_baseline_localises_single_source_frames(tree: tuple[Path, dict]) -> None:
    root, _ = tree
    train = read_seld_split(str(root), "dev-train", 24000)
    test = read_seld_split(str(root), "dev-test", 24000)
    extractor = FeatureExtractor(n_mels=32)
    events, threshold = seld.intensity_predictions(extractor, train, test)
    assert -60 <= threshold <= 0
    for r, predicted in zip(test, events, strict=True):
        by_frame = {e.frame: e for e in predicted}
        single = {}
        for e in r.events:
            single[e.frame] = None if e.frame in single else e
        checked = 0
        for frame, truth in single.items():
            if truth is None or frame not in by_frame or frame + 1 not in single or frame - 1 not in single:
                continue  # overlaps and onsets/offsets mix two fields
            guess = by_frame[frame]
            error = angular_error(
                torch.tensor(guess.azimuth), torch.tensor(guess.elevation),
                torch.tensor(truth.azimuth), torch.tensor(truth.elevation),
            )  # fmt: skip
            assert math.degrees(float(error)) < 3.0
            checked += 1
        assert checked >= 10
        sounding = {
            e.frame + d for e in r.events for d in (-1, 0, 1)
        }  # an STFT window spills into neighbours
        silent = set(range(r.frames)) - sounding
        assert silent and not silent & set(by_frame), "a frame of noise only is not active"


def test_every_method_scored_paired_and_written_out(tree: tuple[Path, dict]) -> None:
    root, truth = tree
    cfg = load_config(None, TINY)
    encoders = random_init(cfg, torch.device("cpu"))
    suite = EvalConfig(seld_url=str(root), seld_epochs=2, resamples=200, hidden=16)
    extractor = FeatureExtractor.from_config(cfg.data)
    # the checkpoint's "model" is the random init itself: its difference from random init must be 0
    ctx = Context(encoders, encoders, suite, cfg, extractor)
    result = seld.run(ctx)
    assert set(result.scores) == {"model", REFERENCE, "input_oracle", "crnn", "intensity"}
    for method, scores in result.scores.items():
        assert set(scores) == set(seld.METRICS)
        for metric, e in scores.items():
            assert e.low - 1e-9 <= e.mean <= e.high + 1e-9, (method, metric)
        expected = (scores["er20"].mean + 1 - scores["f20"].mean + scores["le_cd_deg"].mean / 180) / 4
        assert scores["seld_score"].mean == pytest.approx(expected + (1 - scores["lr_cd"].mean) / 4)
    for e in result.differences["model"].values():
        assert (e.mean, e.low, e.high) == (0.0, 0.0, 0.0)
    stems = [stem for stem in truth if stem.startswith("dev-test")]
    assert len(stems) == 2
    for method in result.scores:
        for stem in stems:
            parse_labels(result.files[f"seld/{method}/{stem}.csv"], stem)  # a valid DCASE file
    table = result.files["seld/per_class.md"]
    assert all(f"| {name} |" in table for name in CLASSES)
    printed = format_table({"model": Report("ckpt", 0, None, [result], 0.0)})
    assert "seld seld_score ↓" in printed and "seld f20% ↑" in printed and "seld le_cd° ↓" in printed
