"""Joint augmentations: a flipped sample's video and audio still agree; jitters are per clip and bounded."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dataloading.augment import colour_jitter, horizontal_flip, volume_jitter
from dataloading.features import intensity_doa
from dataloading.foa import encode_plane_wave, steer
from dataloading.geometry import crop, equirect_to_direction

H, W = 64, 128
F64 = torch.float64


def _scene(row: int, col: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """An equirect frame with one lit pixel and FOA with a noise source at that pixel's centre."""
    video = torch.zeros(1, 1, H, W, dtype=F64)
    video[0, 0, row, col] = 1.0
    az, el = (
        float(a) for a in equirect_to_direction(torch.tensor((col + 0.5) / W), torch.tensor((row + 0.5) / H))
    )
    noise = torch.randn(1, 12000, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return video, encode_plane_wave(noise, az, el), az, el


def _marker_direction(video: torch.Tensor) -> tuple[float, float]:
    row, col = divmod(int(video[0, 0].argmax()), video.shape[-1])
    az, el = equirect_to_direction(torch.tensor((col + 0.5) / W), torch.tensor((row + 0.5) / H))
    return float(az), float(el)


@pytest.mark.parametrize(("row", "col"), [(20, 30), (40, 100), (32, 0), (10, 64)])
def test_flipped_equirect_and_foa_agree(row: int, col: int) -> None:
    video, foa, az, _ = _scene(row, col)
    video_f, foa_f, az_f = horizontal_flip(video, foa, torch.tensor([az]))
    seen_az, seen_el = _marker_direction(video_f)
    heard_az, heard_el = (float(v) for v in intensity_doa(foa_f))
    assert math.remainder(seen_az - heard_az, 2 * math.pi) == pytest.approx(0.0, abs=math.radians(2))
    assert seen_el == pytest.approx(heard_el, abs=math.radians(2))
    assert float(az_f) == pytest.approx(-az)
    assert math.remainder(heard_az + az, 2 * math.pi) == pytest.approx(0.0, abs=math.radians(2))


@settings(max_examples=40, deadline=None)
@given(st.floats(-math.pi, math.pi), st.floats(-1.2, 1.2))
def test_flip_commutes_with_crop_and_steer(az: float, el: float) -> None:
    gen = torch.Generator().manual_seed(1)
    video = torch.rand(1, 3, H, W, generator=gen, dtype=F64)
    foa = torch.randn(1, 4, 256, generator=gen, dtype=F64)
    a, e = torch.tensor([az], dtype=F64), torch.tensor([el], dtype=F64)
    crop_f, steered_f, _ = horizontal_flip(crop(video, a, e, 1.0, 17), steer(foa, a[:, None], e[:, None]), a)
    video_m, foa_m, a_m = horizontal_flip(video, foa, a)
    torch.testing.assert_close(crop_f, crop(video_m, a_m, e, 1.0, 17))
    torch.testing.assert_close(steered_f, steer(foa_m, a_m[:, None], e[:, None]))


def test_flipped_crop_and_steered_audio_agree() -> None:
    """Source 0.3 rad left of the view: left in the crop, positive steered azimuth; mirrored when flipped."""
    video, foa, az, el = _scene(30, 40)
    view_az, view_el, hfov, size = az - 0.3, el, math.radians(90), 65
    a, e = torch.tensor([view_az], dtype=F64), torch.tensor([view_el], dtype=F64)
    crops = crop(video, a, e, hfov, size)
    steered = steer(foa, view_az, view_el)
    for flipped in (False, True):
        c, s, _ = horizontal_flip(crops, steered, a, flipped)
        col = int(c[0, 0].sum(0).argmax())
        heard = float(intensity_doa(s)[0])
        predicted = (size - 1) / 2 - math.tan(heard) / math.tan(hfov / 2) * size / 2
        assert (heard > 0) != flipped and (col < size // 2) != flipped
        assert col == pytest.approx(predicted, abs=2)


def test_flip_mask_is_per_clip() -> None:
    video = torch.rand(3, 2, 3, 2, 8, 16)
    foa = torch.randn(3, 2, 4, 32)
    az = torch.rand(3, 2)
    mask = torch.tensor([True, False, True])
    v, f, a = horizontal_flip(video, foa, az, mask)
    torch.testing.assert_close(v[1], video[1])
    torch.testing.assert_close(v[0], video[0].flip(-1))
    torch.testing.assert_close(f[2, :, 1], -foa[2, :, 1])
    torch.testing.assert_close(f[2, :, [0, 2, 3]], foa[2, :, [0, 2, 3]])
    torch.testing.assert_close(a, torch.where(mask[:, None], -az, az))


def test_colour_jitter_per_clip_bounded_and_seeded() -> None:
    video = torch.rand(4, 2, 3, 2, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.5 + 0.25
    out = colour_jitter(video, 0.4, 0.4, 0.4, torch.Generator().manual_seed(3))
    assert out.shape == video.shape and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, colour_jitter(video, 0.4, 0.4, 0.4, torch.Generator().manual_seed(3)))
    torch.testing.assert_close(colour_jitter(video, 0.0, 0.0, 0.0), video)
    bright = colour_jitter(video, 0.4, 0.0, 0.0, torch.Generator().manual_seed(4))
    ratio = bright / video
    for clip in range(4):  # one brightness factor per clip, shared by its viewpoints and frames
        assert ratio[clip].std() < 1e-5
        assert 0.6 - 1e-6 <= ratio[clip].mean() <= 1.4 + 1e-6
    grey = colour_jitter(video, 0.0, 0.0, 1.0, torch.Generator().manual_seed(5))
    assert not torch.allclose(grey, video)


def test_volume_jitter_keeps_direction() -> None:
    foa = encode_plane_wave(torch.randn(8, 4800, generator=torch.Generator().manual_seed(6)), 1.0, 0.3)
    out = volume_jitter(foa, 6.0, torch.Generator().manual_seed(8))
    gain_db = 20 * torch.log10(out[:, 0].norm(dim=-1) / foa[:, 0].norm(dim=-1))
    assert (gain_db.abs() <= 6.0 + 1e-4).all() and gain_db.std() > 0.5
    torch.testing.assert_close(torch.stack(intensity_doa(out)), torch.stack(intensity_doa(foa)))
