"""Viewpoint candidates: tile geometry, detections mapped back to the sphere, sound directions."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from cluster.detect import (
    Detection,
    MotionSaliency,
    ObjectFinder,
    SpectralSaliency,
    Tile,
    angular_distance,
    make_detectors,
    merge,
    sound_directions,
    tiles_for,
)
from dataloading.foa import encode_plane_wave

W, H = 512, 256


def equirect_xy(az: float, el: float) -> tuple[float, float]:
    """Pixel (x, y) of a direction in a W×H equirect image (φ = (1−2x)π, ν = (1−2y)π/2)."""
    return (1 - az / math.pi) / 2 * W - 0.5, (0.5 - el / math.pi) * H - 0.5


def scene_with_disk(az: float, el: float, radius_deg: float = 6.0, seed: int = 0) -> np.ndarray:
    """A smooth random background with a bright textured disk centred at (az, el)."""
    rng = np.random.default_rng(seed)
    background = cv2.resize(
        rng.integers(60, 120, (8, 16, 3), dtype=np.uint8), (W, H), interpolation=cv2.INTER_CUBIC
    )
    image = background.copy()
    ys, xs = np.mgrid[0:H, 0:W]
    pix_az = (1 - 2 * (xs + 0.5) / W) * math.pi
    pix_el = (1 - 2 * (ys + 0.5) / H) * math.pi / 2
    cos_d = np.sin(pix_el) * math.sin(el) + np.cos(pix_el) * math.cos(el) * np.cos(pix_az - az)
    inside = cos_d > math.cos(math.radians(radius_deg))
    stripes = ((xs // 3 + ys // 3) % 2 * 200 + 40).astype(np.uint8)
    image[inside] = np.stack([stripes, 255 - stripes, stripes], -1)[inside]
    return image


@pytest.mark.parametrize(("az", "el"), [(0.0, 0.0), (2.0, 0.3), (-2.9, -0.5), (math.pi, 0.0), (1.0, 1.0)])
def test_tile_centre_looks_at_its_direction_and_remap_samples_there(az: float, el: float) -> None:
    tile = Tile(az, el, math.radians(90), 128)
    got_az, got_el = tile.angles(np.array(64.0), np.array(64.0))  # the pixel just past the centre
    assert math.degrees(angular_distance(float(got_az), float(got_el), az, el)) < 1.0
    map_x, map_y = tile.remap(W, H)
    x, y = equirect_xy(float(got_az), float(got_el))
    assert float(map_y[64, 64]) == pytest.approx(y, abs=1e-3)
    assert float(map_x[64, 64]) == pytest.approx(x % W, abs=1e-3)
    # image right is decreasing azimuth, image up is increasing elevation
    right_az, _ = tile.angles(np.array(100.0), np.array(64.0))
    _, up_el = tile.angles(np.array(64.0), np.array(20.0))
    assert math.sin(float(right_az) - az) < 0 and float(up_el) > el


def test_tiles_cover_the_whole_sphere() -> None:
    tiles = tiles_for(W)
    rng = np.random.default_rng(0)
    z = rng.uniform(-1, 1, 500)
    for az, el in zip(rng.uniform(-math.pi, math.pi, 500), np.arcsin(z), strict=True):
        assert min(angular_distance(az, el, t.azimuth, t.elevation) for t in tiles) < t_half_diag(tiles[0])


def t_half_diag(tile: Tile) -> float:
    return math.atan(math.sqrt(2) * math.tan(tile.fov / 2))


@pytest.mark.parametrize(("az", "el"), [(0.5, 0.1), (-2.5, 0.3), (3.1, -0.1), (1.2, 0.95)])
def test_a_salient_object_is_found_at_its_direction(az: float, el: float) -> None:
    finder = ObjectFinder([SpectralSaliency()])
    found = finder.find([(0.0, scene_with_disk(az, el))])
    assert found and all(d.detector == "saliency" for d in found)
    best = min(angular_distance(d.azimuth, d.elevation, az, el) for d in found)
    assert math.degrees(best) < 5


def test_motion_is_found_where_the_object_moved() -> None:
    az, el = -1.0, 0.2
    frames = [(0.0, scene_with_disk(az, el, seed=1)), (0.5, scene_with_disk(az + 0.06, el, seed=1))]
    found = ObjectFinder([MotionSaliency()]).find(frames)
    assert found and {d.label for d in found} == {"motion"}
    assert math.degrees(min(angular_distance(d.azimuth, d.elevation, az + 0.03, el) for d in found)) < 6
    assert ObjectFinder([MotionSaliency()]).find(frames[:1]) == []  # one frame: no motion


def test_duplicates_from_overlapping_tiles_merge_keeping_the_best() -> None:
    a = Detection("x", 0.9, 0.0, 0.0, 0.1, 0.0, "d")
    b = Detection("x", 0.5, 0.05, 0.0, 0.1, 0.0, "d")
    c = Detection("y", 0.4, 0.05, 0.0, 0.1, 0.0, "d")
    far = Detection("x", 0.3, 1.0, 0.0, 0.1, 0.0, "d")
    assert merge([b, far, c, a]) == [a, c, far]
    assert a.as_json() == {
        "label": "x",
        "score": 0.9,
        "direction": [0.0, 0.0],
        "size_deg": 5.73,
        "time_s": 0.0,
        "detector": "d",
    }


def test_detector_specs() -> None:
    assert make_detectors("none") == []
    assert {d.name for d in make_detectors("builtin")} >= {"saliency", "motion"}
    with pytest.raises(ValueError, match="builtin, none or onnx:PATH"):
        make_detectors("yolo")
    with pytest.raises(RuntimeError, match=r"onnxruntime|not found"):
        make_detectors("onnx:/nowhere/model.onnx")


def test_sound_direction_of_a_plane_wave() -> None:
    rate = 24000
    signal = torch.randn(rate, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.1
    foa = encode_plane_wave(signal, math.radians(-120), math.radians(30)).numpy()
    found = sound_directions(foa, rate)
    assert len(found) == 2
    for entry in found:
        assert entry["direction"] == pytest.approx([-120, 30], abs=0.5)
    assert sound_directions(np.zeros((4, rate)), rate) == []
