"""The cluster bootstrap behind every interval: coverage on simulated clustered data, and its algebra."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.bootstrap import bootstrap, paired_difference


def _clustered(
    rng: np.random.Generator, scenes: int, mean: float, scene_sd: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Items of ``scenes`` scenes (2–7 each) that share a scene effect: correlated within a scene."""
    sizes = rng.integers(2, 8, scenes)
    groups = np.repeat(np.arange(scenes), sizes)
    values = mean + rng.normal(0, scene_sd, scenes)[groups] + rng.normal(0, 0.2, len(groups))
    return values, groups


def test_interval_covers_the_true_mean_in_at_least_90_percent_of_50_draws() -> None:
    rng = np.random.default_rng(2026)
    covered = 0
    for draw in range(50):
        values, groups = _clustered(rng, scenes=100, mean=0.6)
        estimate = bootstrap(values, groups, seed=draw)
        covered += estimate.low <= 0.6 <= estimate.high
    assert covered >= 45, covered


def test_resampling_items_instead_of_scenes_would_be_too_narrow() -> None:
    """Why scenes: with correlated items, per-item resampling understates the interval."""
    values, groups = _clustered(np.random.default_rng(1), scenes=60, mean=0.5, scene_sd=0.2)
    by_scene = bootstrap(values, groups)
    by_item = bootstrap(values, np.arange(len(values)))
    assert by_scene.high - by_scene.low > 1.3 * (by_item.high - by_item.low)
    assert by_scene.groups == 60 and by_item.groups == len(values)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=3, max_size=40), st.integers(0, 2**31 - 1))
def test_estimate_is_the_item_mean_inside_its_interval(values: list[float], seed: int) -> None:
    array = np.array(values)
    groups = np.arange(len(array)) // 2
    estimate = bootstrap(array, groups, resamples=200, seed=seed)
    assert estimate.mean == pytest.approx(array.mean())
    assert estimate.low <= estimate.high
    assert array.min() - 1e-9 <= estimate.low and estimate.high <= array.max() + 1e-9


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=3, max_size=40), st.floats(-3, 3), st.integers(0, 2**31 - 1))
def test_paired_difference_of_a_shifted_copy_is_the_shift_exactly(
    values: list[float], shift: float, seed: int
) -> None:
    """Whatever scenes are drawn, a method that scores ``shift`` more on every item differs by exactly
    ``shift``: the pairing cancels the scenes' own variation."""
    a = np.array(values)
    groups = np.arange(len(a)) // 3
    difference = paired_difference(a + shift, a, groups, resamples=200, seed=seed)
    assert difference.mean == pytest.approx(shift, abs=1e-9)
    assert difference.low == pytest.approx(shift, abs=1e-9) and difference.high == pytest.approx(
        shift, abs=1e-9
    )


def test_constant_values_have_a_zero_width_interval_and_mismatched_groups_are_refused() -> None:
    estimate = bootstrap(np.full(10, 0.5), np.arange(10))
    assert (estimate.mean, estimate.low, estimate.high) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="group labels"):
        bootstrap(np.zeros(4), np.arange(3))


def test_seeds_widen_the_interval_by_their_spread_and_pair_by_seed() -> None:
    """Three seeds that disagree: resampling seeds adds their spread to the scene interval; a method
    ahead by a constant in every seed differs by exactly that, whatever is drawn."""
    values, groups = _clustered(np.random.default_rng(3), scenes=80, mean=0.5)
    seeds = np.stack([values - 0.05, values, values + 0.05])
    pooled = bootstrap(seeds, groups)
    single = bootstrap(values, groups)
    assert pooled.mean == pytest.approx(single.mean)
    assert pooled.high - pooled.low > single.high - single.low + 0.04
    difference = paired_difference(seeds + 0.1, seeds, groups)
    assert (difference.low, difference.high) == (pytest.approx(0.1), pytest.approx(0.1))
