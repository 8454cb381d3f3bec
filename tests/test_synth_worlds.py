"""The synthetic scenes' worlds: the default one pinned as it always was, and what the easy one holds."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataloading.config import StorageConfig, SynthConfig
from dataloading.synth.assets import Catalog, SoundAsset
from dataloading.synth.generate import options_of
from dataloading.synth.render_video import sized_sprite
from dataloading.synth.scene import (
    OBJECT_CLASSES,
    OFFSCREEN_LABELS,
    SOUNDING_CLASSES,
    WORLDS,
    Scene,
    sample_scene,
    stays_within,
)
from tests.helpers import alpha_of

# A catalog that does not depend on what apt could fetch: two procedural recordings of every label.
LABELS = sorted({OBJECT_CLASSES[k].sound for k in SOUNDING_CLASSES} | set(OFFSCREEN_LABELS))
CATALOG = Catalog(
    tuple(
        SoundAsset(f"procedural:{label}:{v}", label, f"src{v}", f"{label}{v}")
        for label in LABELS
        for v in range(2)
    ),
    tuple(f"procedural:{k}" for k in range(3)),
)


def _rounded(value: Any) -> Any:
    """Floats to 6 decimals (so that the last bits of libm's sin/cos do not change the digest)."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def digest(scenes: list[Scene]) -> str:
    """A digest of everything drawn for ``scenes``: room, background, noise, yaw and every source."""
    data = [
        [
            scene.room.dims, scene.room.rt60, scene.room.mic, scene.background, scene.noise_db,
            scene.background_yaw,
            [
                [
                    s.kind, s.object_class, s.sound.path if s.sound else None, s.azimuth, s.elevation,
                    s.azimuth_rate, s.elevation_amp, s.elevation_period, s.distance, s.width, s.gain_db,
                    s.events,
                ]
                for s in scene.sources
            ],
        ]
        for scene in scenes
    ]  # fmt: skip
    return hashlib.sha256(json.dumps(_rounded(data)).encode()).hexdigest()


def test_the_default_world_draws_exactly_the_scenes_it_drew_before_worlds_existed() -> None:
    """Digests of 40 scenes of each kind taken before the easy world was added: same seed, same scene."""
    short = [sample_scene(seed, 2.0, CATALOG) for seed in range(40)]
    assert digest(short) == "1cff2d6a33d5fdf41212fc55cd5043cddb5856728c703e8ca14c15edb64611dd"
    turns = [sample_scene(seed, 20.0, CATALOG, one_at_a_time=True, room_family="eval") for seed in range(40)]
    assert digest(turns) == "bcbdf445a5b2452f7bbb923e48aee9c28ed5b9ca5f31340b7d92bb87bfd7dacb"
    assert digest([sample_scene(0, 2.0, CATALOG, world="default")]) == digest(short[:1])


def test_the_world_goes_from_the_config_to_the_generators_options() -> None:
    assert options_of(SynthConfig(world="easy"), StorageConfig(), out="x").world == "easy"
    assert options_of(SynthConfig(), StorageConfig(), out="x").world == "default"


def _azimuth_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Absolute azimuth differences in radians, wrapped to [0, π]."""
    return np.abs((a - b + np.pi) % (2 * np.pi) - np.pi)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), seconds=st.sampled_from([1.0, 2.0, 10.0, 60.0]))
def test_an_easy_scene_holds_one_or_two_big_distinct_sounding_objects_far_apart(
    seed: int, seconds: float
) -> None:
    scene = sample_scene(seed, seconds, CATALOG, world="easy")
    sources = scene.sources
    assert 1 <= len(sources) <= 2
    assert all(s.kind == "visible" and s.sound is not None for s in sources)  # no silent, pillar, off-screen
    assert len({s.object_class for s in sources}) == len(sources)
    times = np.linspace(0, seconds, 400)
    for s in sources:
        assert math.radians(35) <= s.width <= math.radians(60)
        az, el = s.direction(times)
        assert np.abs(el).max() <= math.radians(15)
        assert (np.abs(az) + s.width / 2 < np.pi).all(), "the object straddles the seam"
    if len(sources) == 2:
        (a, _), (b, _) = (s.direction(times) for s in sources)
        assert _azimuth_gap(a, b).min() >= math.radians(70) - 1e-9


def test_easy_scenes_have_one_or_two_objects_about_equally_often_and_every_class() -> None:
    scenes = [sample_scene(seed, 2.0, CATALOG, world="easy") for seed in range(300)]
    counts = np.bincount([len(s.sources) for s in scenes], minlength=3)
    assert counts[0] == 0 and 100 < counts[1] < 200
    assert {s.object_class for scene in scenes for s in scene.sources} == set(SOUNDING_CLASSES)


@settings(max_examples=300, deadline=None)
@given(
    start=st.floats(-20, 20),
    move=st.floats(-10, 10),
    low=st.floats(-4, 4),
    span=st.floats(0.02, 2 * math.pi - 0.02),
)
def test_stays_within_agrees_with_checking_every_point_of_the_way(
    start: float, move: float, low: float, span: float
) -> None:
    """Points 0.0025 rad apart at most: all within the arc shrunk by 0.004 means the whole way is inside
    the arc; one outside the arc widened by 0.004 means the way leaves it."""
    path, margin = np.linspace(start, start + move, 4001), 0.004
    if ((path - low - margin) % (2 * np.pi) <= span - 2 * margin).all():
        assert stays_within(start, start + move, low, low + span)
    if ((path - low + margin) % (2 * np.pi) > span + 2 * margin).any():
        assert not stays_within(start, start + move, low, low + span)


@pytest.mark.parametrize("seed", range(8))
def test_the_renderer_draws_an_easy_object_as_wide_as_its_ground_truth_says(seed: int) -> None:
    """Drawn on the horizon, a sprite ``width`` wide spans azimuths atan(u) for its tangent-plane
    columns u in ±tan(width / 2): the columns its picture covers (a cut-out or silhouette may leave some
    bare). No part of an easy object reaches the seam where it is."""
    frame_width = 512
    for source in sample_scene(seed, 2.0, CATALOG, world="easy").sources:
        sprite = sized_sprite(source, frame_width)
        az, el = (float(v) for v in source.direction(0.0))
        alpha, _ = alpha_of(sprite, az, 0.0, source.width, (frame_width, frame_width // 2))
        cols = np.nonzero(alpha.max(axis=0) > 0.02)[0]
        drawn = np.radians((cols.max() - cols.min() + 1) * 360 / frame_width)
        covered = np.nonzero(sprite[..., 3].max(axis=0) > 0.02)[0]
        u = (np.array([covered.min(), covered.max() + 1]) / sprite.shape[1] * 2 - 1) * np.tan(
            source.width / 2
        )
        expected = np.arctan(u[1]) - np.arctan(u[0])
        assert expected > 0.8 * source.width
        assert abs(drawn - expected) < np.radians(2), (source.object_class, np.degrees([drawn, expected]))
        at_place, _ = alpha_of(sprite, az, el, source.width, (frame_width, frame_width // 2))
        assert not at_place[:, [0, -1]].any()


def test_the_worlds_are_the_ones_the_config_names() -> None:
    from typing import get_args

    from dataloading.config import World

    assert set(WORLDS) == set(get_args(World))
