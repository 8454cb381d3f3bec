"""Viewpoint samplers: limits honoured, reproducible, sources and objects found, shortfalls filled."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dataloading.foa import encode_plane_wave
from dataloading.loader import _labels
from dataloading.viewpoints import (
    Cues,
    angular_distance,
    audio_viewpoints,
    listed_viewpoints,
    mix_viewpoints,
    random_viewpoints,
    sample_viewpoints,
    sound_peaks,
)

MAX_EL, MIN_SEP = math.radians(30), math.radians(36)


def _check_limits(az: np.ndarray, el: np.ndarray, k: int, max_el: float, min_sep: float) -> None:
    assert az.shape == el.shape == (k,)
    assert (np.abs(el) <= max_el + 1e-12).all()
    assert (np.abs(az) <= math.pi + 1e-12).all()
    dist = angular_distance(az[:, None], el[:, None], az[None], el[None])
    assert (dist[~np.eye(k, dtype=bool)] >= min_sep - 1e-9).all()


def _min_angle_to(az: np.ndarray, el: np.ndarray, target_az: float, target_el: float) -> float:
    return float(np.degrees(angular_distance(az, el, np.array(target_az), np.array(target_el)).min()))


def _two_sources(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    foa = encode_plane_wave(torch.randn(12000, generator=gen, dtype=torch.float64), 1.0, 0.2)
    foa = foa + encode_plane_wave(torch.randn(12000, generator=gen, dtype=torch.float64), -2.0, -0.1)
    return foa + 0.1 * torch.randn(4, 12000, generator=gen, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 6),
    st.floats(math.radians(5), math.radians(60)),
    st.floats(math.radians(5), math.radians(40)),
)
def test_random_viewpoints_honour_limits_and_seed(seed: int, k: int, max_el: float, min_sep: float) -> None:
    az, el = random_viewpoints(k, np.random.default_rng(seed), max_el, min_sep)
    _check_limits(az, el, k, max_el, min_sep)
    again = random_viewpoints(k, np.random.default_rng(seed), max_el, min_sep)
    np.testing.assert_array_equal(az, again[0])
    np.testing.assert_array_equal(el, again[1])


def test_random_viewpoints_terminate_when_packing_is_impossible() -> None:
    az, el = random_viewpoints(12, np.random.default_rng(0), math.radians(10), math.radians(90))
    assert az.shape == (12,) and (np.abs(el) <= math.radians(10)).all()


def test_random_elevations_are_uniform_on_the_sphere() -> None:
    """sin(elevation) is uniform within the band, so the mean |elevation| is below the band's midpoint."""
    _, el = random_viewpoints(1, np.random.default_rng(1), MAX_EL, MIN_SEP)
    samples = np.concatenate(
        [random_viewpoints(1, np.random.default_rng(s), MAX_EL, 0.0)[1] for s in range(400)]
    )
    assert len(el) == 1
    assert abs(np.sin(samples).mean()) < 0.05
    assert np.abs(np.sin(samples)).mean() == pytest.approx(math.sin(MAX_EL) / 2, abs=0.03)


def test_sound_peaks_find_two_sources() -> None:
    az, el, power = sound_peaks(_two_sources(), MAX_EL)
    assert len(az) >= 2 and (np.diff(power) <= 0).all()
    assert _min_angle_to(az[:2], el[:2], 1.0, 0.2) < 5.0
    assert _min_angle_to(az[:2], el[:2], -2.0, -0.1) < 5.0


def test_audio_viewpoints_aim_at_sources_then_fill() -> None:
    az, el = audio_viewpoints(_two_sources(), 4, np.random.default_rng(0), MAX_EL, MIN_SEP)
    _check_limits(az, el, 4, MAX_EL, MIN_SEP)
    assert _min_angle_to(az, el, 1.0, 0.2) < 5.0
    assert _min_angle_to(az, el, -2.0, -0.1) < 5.0


def test_object_viewpoints_use_objects_clamp_and_fill() -> None:
    objects = np.array([[0.5, math.radians(60)], [0.52, 0.0], [-2.5, -0.2]])  # 2nd is too close to the 1st
    az, el = listed_viewpoints(objects, 4, np.random.default_rng(0), MAX_EL, MIN_SEP)
    _check_limits(az, el, 4, MAX_EL, MIN_SEP)
    assert _min_angle_to(az, el, -2.5, -0.2) < 1e-6
    assert min(_min_angle_to(az, el, 0.5, MAX_EL), _min_angle_to(az, el, 0.52, 0.0)) < 1e-6


def test_object_viewpoints_vary_with_seed_when_more_objects_than_k() -> None:
    objects = np.stack((np.linspace(-3, 3, 8), np.zeros(8)), 1)
    picks = {
        tuple(np.round(listed_viewpoints(objects, 2, np.random.default_rng(s), MAX_EL, 0.3)[0], 6))
        for s in range(10)
    }
    assert len(picks) > 1
    assert all(min(abs(objects[:, 0] - a)) < 1e-6 for pick in picks for a in pick)


def test_mix_takes_objects_then_sounds_then_random() -> None:
    objects = np.array([[2.8, 0.1]])
    az, el = mix_viewpoints(Cues(objects, _two_sources()), 4, np.random.default_rng(0), MAX_EL, MIN_SEP)
    _check_limits(az, el, 4, MAX_EL, MIN_SEP)
    assert (az[0], el[0]) == (2.8, 0.1)
    assert _min_angle_to(az[1:3], el[1:3], 1.0, 0.2) < 5.0
    assert _min_angle_to(az[1:3], el[1:3], -2.0, -0.1) < 5.0
    # without any candidates the mix is purely random, and still honours the limits
    _check_limits(*mix_viewpoints(Cues(), 4, np.random.default_rng(0), MAX_EL, MIN_SEP), 4, MAX_EL, MIN_SEP)


def test_label_viewpoints_look_at_each_labelled_source_of_the_clip() -> None:
    """A sample's labels (two sources overlapping in frames 3–4, one moving) give one direction per
    source, at the middle of its frames; the labels sampler looks at both, and mix takes them first."""
    rows = [
        [2, 8, 0, 90.0, 0.0],
        [3, 1, 0, -45.0, 10.0],
        [3, 8, 0, 92.0, 0.0],
        [4, 1, 0, -45.0, 10.0],
        [4, 8, 0, 94.0, 0.0],
    ]
    labels = _labels(rows)
    np.testing.assert_allclose(np.degrees(labels), [[92.0, 0.0], [-45.0, 10.0]])
    assert _labels(None).shape == (0, 2)  # unlabelled clip
    az, el = listed_viewpoints(labels, 4, np.random.default_rng(0), MAX_EL, MIN_SEP)
    _check_limits(az, el, 4, MAX_EL, MIN_SEP)
    for target in labels:
        assert _min_angle_to(az, el, *target) < 1e-6
    again = sample_viewpoints("labels", Cues(labels=labels), 4, np.random.default_rng(0), MAX_EL, MIN_SEP)
    np.testing.assert_array_equal(az, again[0])
    objects = np.array([[2.8, 0.1], [-2.0, 0.0]])
    mix_az, _ = mix_viewpoints(Cues(objects, labels=labels), 2, np.random.default_rng(1), MAX_EL, MIN_SEP)
    assert sorted(np.round(np.degrees(mix_az))) == [-45.0, 92.0]  # labels before objects
    # a clip without labels draws what it drew before labels existed
    plain = mix_viewpoints(Cues(objects, _two_sources()), 4, np.random.default_rng(2), MAX_EL, MIN_SEP)
    empty = mix_viewpoints(
        Cues(objects, _two_sources(), _labels(None)), 4, np.random.default_rng(2), MAX_EL, MIN_SEP
    )
    np.testing.assert_array_equal(plain, empty)


def test_the_labels_sampler_is_a_config_choice() -> None:
    from trainer.config import load_config

    assert load_config(None, ["--data.viewpoint_sampler", "labels"]).data.viewpoint_sampler == "labels"


@pytest.mark.parametrize("sampler", ["random", "audio", "objects", "labels", "mix"])
def test_dispatch(sampler: str) -> None:
    cues = Cues(objects=np.array([[1.0, 0.0]]), foa=_two_sources(), labels=np.array([[-1.0, 0.1]]))
    az, el = sample_viewpoints(sampler, cues, 4, np.random.default_rng(3), MAX_EL, MIN_SEP)
    _check_limits(az, el, 4, MAX_EL, MIN_SEP)


def test_dispatch_errors() -> None:
    with pytest.raises(ValueError, match="FOA"):
        sample_viewpoints("audio", Cues(), 4, np.random.default_rng(0), MAX_EL, MIN_SEP)
    with pytest.raises(ValueError, match="unknown"):
        sample_viewpoints("loudest", Cues(), 4, np.random.default_rng(0), MAX_EL, MIN_SEP)  # type: ignore[arg-type]
