"""360° geometry: pixel <-> direction, gnomonic crops (seam, poles, orientation), DALI remap maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dataloading.foa import direction_vector
from dataloading.geometry import (
    crop,
    direction_to_equirect,
    equirect_to_direction,
    gnomonic_directions,
    gnomonic_grid,
    remap_maps,
    wrap_pad,
)

H, W = 128, 256
SIZE = 31  # odd, so the crop has a centre pixel


def _marker(row: int, col: int) -> tuple[torch.Tensor, float, float]:
    """An equirect image with one lit pixel, and the direction of that pixel's centre."""
    img = torch.zeros(1, 1, H, W, dtype=torch.float64)
    img[0, 0, row, col] = 1.0
    f64 = torch.float64
    az, el = equirect_to_direction(
        torch.tensor((col + 0.5) / W, dtype=f64), torch.tensor((row + 0.5) / H, dtype=f64)
    )
    return img, float(az), float(el)


def test_known_directions() -> None:
    az, el = equirect_to_direction(torch.tensor([0.5, 0.25, 0.75, 0.0]), torch.tensor([0.5, 0.0, 1.0, 0.5]))
    torch.testing.assert_close(az, torch.tensor([0.0, math.pi / 2, -math.pi / 2, math.pi]))
    torch.testing.assert_close(el, torch.tensor([0.0, math.pi / 2, -math.pi / 2, 0.0]))


@settings(max_examples=60, deadline=None)
@given(st.floats(0.0, 0.999), st.floats(0.0, 1.0))
def test_equirect_direction_round_trip(x: float, y: float) -> None:
    az, el = equirect_to_direction(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))
    x2, y2 = direction_to_equirect(az, el)
    assert float(x2) == pytest.approx(x, abs=1e-12)
    assert float(y2) == pytest.approx(y, abs=1e-12)


@pytest.mark.parametrize(
    ("row", "col"),
    [
        (64, 128),  # front
        (40, 10),  # left-behind, above
        (70, 0),  # first column: the ±180° seam
        (50, W - 1),  # last column: the other side of the seam
        (1, 77),  # next to the north pole
        (H - 1, 200),  # the last row, at the south pole
    ],
)
def test_marker_lands_at_crop_centre(row: int, col: int) -> None:
    img, az, el = _marker(row, col)
    out = crop(
        img, torch.tensor([az], dtype=torch.float64), torch.tensor([el], dtype=torch.float64), 0.5, SIZE
    )
    centre = SIZE // 2
    assert out.shape == (1, 1, SIZE, SIZE)
    assert out[0, 0, centre, centre].item() == pytest.approx(1.0, abs=1e-9)
    assert int(out[0, 0].argmax()) == centre * SIZE + centre


@settings(max_examples=40, deadline=None)
@given(st.integers(0, H - 1), st.integers(0, W - 1), st.floats(0.2, 1.5))
def test_marker_anywhere_lands_at_centre(row: int, col: int, hfov: float) -> None:
    img, az, el = _marker(row, col)
    out = crop(
        img, torch.tensor([az], dtype=torch.float64), torch.tensor([el], dtype=torch.float64), hfov, SIZE
    )
    assert out[0, 0, SIZE // 2, SIZE // 2].item() == pytest.approx(1.0, abs=1e-9)


def test_seam_is_continuous() -> None:
    """A crop straddling ±180° equals the same crop of the image rolled half a turn, aimed at the front."""
    img = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rolled = torch.roll(img, W // 2, dims=-1)  # azimuth π now sits at the image centre
    el = torch.tensor([0.2], dtype=torch.float64)
    at_seam = crop(img, torch.tensor([math.pi], dtype=torch.float64), el, 1.2, SIZE)
    at_front = crop(rolled, torch.tensor([0.0], dtype=torch.float64), el, 1.2, SIZE)
    torch.testing.assert_close(at_seam, at_front)


def test_orientation_left_is_left_up_is_up() -> None:
    """A marker at azimuth +0.2, elevation +0.1 appears left of and above the centre of a frontal view."""
    x, y = direction_to_equirect(0.2, 0.1)
    row, col = int(y * H), int(x * W)
    img = torch.zeros(1, 1, H, W)
    img[0, 0, row - 1 : row + 2, col - 1 : col + 2] = 1.0
    out = crop(img, torch.tensor([0.0]), torch.tensor([0.0]), math.pi / 2, 65)
    peak_row, peak_col = divmod(int(out[0, 0].argmax()), 65)
    assert peak_col == pytest.approx(32 - 32.5 * math.tan(0.2), abs=2)
    assert peak_row == pytest.approx(32 - 32.5 * math.tan(0.1) / math.cos(0.2), abs=2)


def test_view_directions_and_fov() -> None:
    az, el = gnomonic_directions(torch.tensor(2.5), torch.tensor(-0.7), torch.tensor(1.0), SIZE, SIZE)
    centre = direction_vector(az[SIZE // 2, SIZE // 2], el[SIZE // 2, SIZE // 2])
    torch.testing.assert_close(centre, direction_vector(torch.tensor(2.5), torch.tensor(-0.7)))
    edge = direction_vector(az[SIZE // 2, 0], el[SIZE // 2, 0])
    u = (1.0 / SIZE - 1.0) * math.tan(0.5)  # the first pixel centre in the image plane
    assert math.acos(float(torch.dot(centre, edge))) == pytest.approx(math.atan(abs(u)), abs=1e-5)


def test_batched_views_with_time_axis() -> None:
    gen = torch.Generator().manual_seed(1)
    video = torch.rand(2, 3, 4, H, W, generator=gen)  # [B, C, T, H, W]
    az = torch.tensor([[0.0, 1.0, -2.0], [3.0, 0.5, -0.5]])
    el = torch.tensor([[0.0, 0.3, -0.2], [0.1, 0.0, 0.4]])
    hfov = torch.tensor([0.8, 1.2])  # one field of view per clip, broadcast over its views
    out = crop(video, az, el, hfov[:, None], (16, 24))
    assert out.shape == (2, 3, 3, 4, 16, 24)
    single = crop(video[1:, :, 2], az[1:, 2], el[1:, 2], hfov[1:], (16, 24))
    torch.testing.assert_close(out[1, 2, :, 2], single[0])
    same_view = crop(video[:, :, 0], 0.5, 0.1, 0.9, 8)  # scalar angles: one view for every clip
    assert same_view.shape == (2, 3, 8, 8)


def _remap_reference(image: np.ndarray, mapx: np.ndarray, mapy: np.ndarray) -> np.ndarray:
    """DALI remap semantics: pixel_origin="corner", bilinear, constant-0 border; image [H, W]."""
    h, w = image.shape
    u, v = mapx - 0.5, mapy - 0.5  # corner origin: pixel i's centre is at i + 0.5
    x0, y0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fx, fy = u - x0, v - y0

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        return np.where(inside, image[yy.clip(0, h - 1), xx.clip(0, w - 1)], 0.0)

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize(("az", "el"), [(0.3, 0.1), (math.pi, -0.2), (-3.0, 1.2), (1.0, -1.45)])
def test_remap_maps_reproduce_crop(az: float, el: float) -> None:
    img = torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mapx, mapy = remap_maps(az, el, 1.1, SIZE, SIZE + 8, H, W)
    assert mapx.dtype == torch.float32 and mapx.shape == (SIZE, SIZE + 8)
    expected = crop(img, torch.tensor([az]), torch.tensor([el]), 1.1, (SIZE, SIZE + 8))[0, 0].numpy()
    got = _remap_reference(wrap_pad(img)[0, 0].numpy(), mapx.double().numpy(), mapy.double().numpy())
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_grid_within_range_and_aspect() -> None:
    grid = gnomonic_grid(torch.tensor([0.0, 3.1]), torch.tensor([1.5, -1.5]), 1.5, 2.0, 10, 20)
    assert grid.shape == (2, 10, 20, 2)
    assert grid.abs().max() <= 1.0
