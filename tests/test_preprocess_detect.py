"""Viewpoint candidates: tile geometry, detections mapped back to the sphere, sound directions."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from cluster.detect import (
    HAAR_MIN_TILE,
    UPRIGHT_MAX_ELEVATION,
    Box,
    Detection,
    HaarDetector,
    MotionSaliency,
    ObjectFinder,
    SpectralSaliency,
    Tile,
    angular_distance,
    make_detectors,
    merge,
    take_in_turn,
    tiles_for,
)
from dataloading.schema import DetectedObject

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
    assert a.record() == DetectedObject("x", 0.9, (0.0, 0.0), 5.73, 0.0, "d")


class CountingDetector:
    """Reports one box at every tile's centre and counts the tiles it was shown."""

    motion = False

    def __init__(self, name: str, upright: bool) -> None:
        self.name, self.upright, self.calls = name, upright, 0

    def detect(self, tile: np.ndarray, previous: np.ndarray | None) -> list[Box]:
        self.calls += 1
        return [Box(self.name, 1.0 if self.upright else 0.001, tile.shape[1] / 2, tile.shape[0] / 2, 8, 8)]


def test_upright_detectors_look_at_the_horizon_ring_only_and_every_detector_keeps_a_share() -> None:
    upright, everywhere = CountingDetector("upright", True), CountingDetector("everywhere", False)
    found = ObjectFinder([upright, everywhere]).find([(0.0, scene_with_disk(0.0, 0.0))])
    tiles = tiles_for(W)
    assert everywhere.calls == len(tiles)
    assert upright.calls == sum(abs(t.elevation) <= UPRIGHT_MAX_ELEVATION for t in tiles) == 8
    assert all(abs(d.elevation) < UPRIGHT_MAX_ELEVATION for d in found if d.detector == "upright")
    # the upright detector's scores are all higher, yet the cut leaves half of the places to the other
    assert [d.detector for d in found] == ["upright", "everywhere"] * 8


def test_the_face_cascade_runs_on_tiles_big_enough_for_faces() -> None:
    from skimage import data

    face = HaarDetector("face", "haarcascade_frontalface_default.xml")
    photo = data.astronaut()  # her face is ~93 pixels across
    small = cv2.resize(photo, None, fx=40 / 93, fy=40 / 93, interpolation=cv2.INTER_AREA)
    tile = np.full((HAAR_MIN_TILE, HAAR_MIN_TILE, 3), 90, np.uint8)
    tile[: small.shape[0], : small.shape[1]] = small
    found = face.detect(tile, None)
    assert len(found) == 1 and 30 < found[0].w < 50
    assert face.detect(tile[: HAAR_MIN_TILE // 2, : HAAR_MIN_TILE // 2], None) == []


def test_take_in_turn_alternates_detectors_best_first() -> None:
    a = [Detection("x", s, 0.0, 0.0, 0.1, 0.0, "a") for s in (0.9, 0.8, 0.7)]
    b = [Detection("y", s, 1.0, 0.0, 0.1, 0.0, "b") for s in (0.2, 0.1)]
    assert take_in_turn([*a, *b], 4) == [a[0], b[0], a[1], b[1]]
    assert take_in_turn([*a, *b], 10) == [a[0], b[0], a[1], b[1], a[2]]
    assert take_in_turn([], 4) == []


def test_detector_specs() -> None:
    assert make_detectors("none") == []
    assert {d.name for d in make_detectors("builtin")} >= {"saliency", "motion"}
    with pytest.raises(ValueError, match="builtin, none or onnx:PATH"):
        make_detectors("yolo")
    with pytest.raises(RuntimeError, match=r"onnxruntime|not found"):
        make_detectors("onnx:/nowhere/model.onnx")
