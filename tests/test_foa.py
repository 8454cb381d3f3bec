"""FOA conventions: encoding, steering, rotations, virtual microphones, and an independent peer check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dataloading.foa import (
    PATTERNS,
    direction_vector,
    encode_plane_wave,
    fuma_to_ambix,
    mono_decode,
    rotation_matrix,
    steer,
    steering_matrix,
    stereo_decode,
    virtual_microphone,
)

azimuths = st.floats(-math.pi, math.pi)
elevations = st.floats(-math.pi / 2, math.pi / 2)
SETTINGS = settings(max_examples=60, deadline=None)


def _noise(n: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_plane_wave_acn_sn3d_gains() -> None:
    s = torch.ones(1, dtype=torch.float64)
    left = encode_plane_wave(s, math.pi / 2, 0.0)[:, 0]
    up = encode_plane_wave(s, 0.3, math.pi / 2)[:, 0]
    front = encode_plane_wave(s, 0.0, 0.0)[:, 0]
    torch.testing.assert_close(left, torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(up, torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(front, torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64))


@SETTINGS
@given(azimuths, elevations)
def test_steered_plane_wave_arrives_at_front(az: float, el: float) -> None:
    s = _noise()
    out = steer(encode_plane_wave(s, az, el), az, el)
    torch.testing.assert_close(out, encode_plane_wave(s, 0.0, 0.0), atol=1e-9, rtol=0)


def test_reversed_composition_misses_off_horizon() -> None:
    """The reference code's R_z(−φ)·R_y(ν) order fails off the horizon; ours must not be that."""
    az, el = 2.0, 0.6
    f64 = torch.float64
    wrong = rotation_matrix(-az, 0.0, 0.0, dtype=f64) @ rotation_matrix(0.0, el, 0.0, dtype=f64)
    front = wrong @ encode_plane_wave(torch.ones(1, dtype=torch.float64), az, el)
    assert front[3, 0] < 0.9  # X gain of a frontal wave would be 1
    right = steering_matrix(az, el, dtype=torch.float64) @ encode_plane_wave(
        torch.ones(1, dtype=torch.float64), az, el
    )
    assert right[3, 0] == pytest.approx(1.0)


@SETTINGS
@given(azimuths, elevations, azimuths, elevations)
def test_steering_preserves_w_and_energy_and_inverts(
    az: float, el: float, src_az: float, src_el: float
) -> None:
    foa = encode_plane_wave(_noise(seed=1), src_az, src_el) + 0.1 * torch.randn(
        4, 256, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    out = steer(foa, az, el)
    torch.testing.assert_close(out[0], foa[0])
    torch.testing.assert_close(out[1:].square().sum(0), foa[1:].square().sum(0))
    inverse = steering_matrix(az, el, dtype=torch.float64).transpose(-1, -2)
    torch.testing.assert_close(inverse @ out, foa)


@SETTINGS
@given(azimuths, st.floats(-1.5, 1.5), st.floats(-math.pi, math.pi))
def test_rotation_moves_plane_wave(yaw: float, pitch: float, roll: float) -> None:
    """Rotating the field equals encoding at the rotated direction, and rotations are orthogonal."""
    d = direction_vector(torch.tensor(0.4, dtype=torch.float64), torch.tensor(-0.3, dtype=torch.float64))
    matrix = rotation_matrix(yaw, pitch, roll, dtype=torch.float64)
    moved = matrix[[3, 1, 2]][:, [3, 1, 2]] @ d  # the Cartesian block in (x, y, z) order
    expected = encode_plane_wave(_noise(), torch.atan2(moved[1], moved[0]), torch.asin(moved[2].clamp(-1, 1)))
    torch.testing.assert_close(matrix @ encode_plane_wave(_noise(), 0.4, -0.3), expected)
    torch.testing.assert_close(matrix @ matrix.mT, torch.eye(4, dtype=torch.float64))


def test_yaw_increases_azimuth_and_batches() -> None:
    yaw = torch.tensor([0.1, 0.5, -1.0], dtype=torch.float64)
    rotated = rotation_matrix(yaw, 0.0, 0.0) @ encode_plane_wave(
        torch.ones(3, 1, dtype=torch.float64), 0.2, 0.0
    )
    torch.testing.assert_close(torch.atan2(rotated[:, 1, 0], rotated[:, 3, 0]), yaw + 0.2)


def test_steer_broadcasts_viewpoints() -> None:
    foa = encode_plane_wave(torch.randn(2, 1, 64), torch.tensor([[0.3], [1.0]]), 0.2)  # [B, 1, 4, N]
    az = torch.tensor([[0.3, 0.0, 1.0], [1.0, 2.0, -1.0]])
    out = steer(foa, az, torch.full_like(az, 0.2))
    assert out.shape == (2, 3, 4, 64)
    torch.testing.assert_close(out[0, 0, 3], foa[0, 0, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1, 0, 3], foa[1, 0, 0], atol=1e-5, rtol=1e-5)


@SETTINGS
@given(azimuths, st.floats(-1.4, 1.4))
def test_cardioid_gain_two_on_axis_null_behind(az: float, el: float) -> None:
    s = _noise()
    foa = encode_plane_wave(s, az, el)
    torch.testing.assert_close(virtual_microphone(foa, az, el, "cardioid"), 2 * s)
    behind = virtual_microphone(foa, az + math.pi, -el, "cardioid")
    assert behind.abs().max() < 1e-9


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_patterns_on_axis_gain_and_off_axis_shape(pattern: str) -> None:
    s = torch.ones(1, dtype=torch.float64)
    p = PATTERNS[pattern]
    for angle in (0.0, 1.0, 2.0, math.pi):
        gain = virtual_microphone(encode_plane_wave(s, angle, 0.0), 0.0, 0.0, pattern)
        assert gain.item() == pytest.approx(2 * (p + (1 - p) * math.cos(angle)))


def test_hypercardioid_null_and_maxre_weight() -> None:
    s = torch.ones(1, dtype=torch.float64)
    null = math.acos(-1 / 3)  # hypercardioid nulls at 109.5°
    assert virtual_microphone(encode_plane_wave(s, null, 0.0), 0.0, 0.0, "hypercardioid").item() == (
        pytest.approx(0.0, abs=1e-12)
    )
    # max-rE at first order in 3D: figure-8 weight / omni weight = 3·g1 with g1 = 1/√3.
    p = PATTERNS["max_re"]
    assert (1 - p) / p == pytest.approx(math.sqrt(3))
    with pytest.raises(ValueError):
        virtual_microphone(encode_plane_wave(s, 0.0, 0.0), 0.0, 0.0, 1.5)


def test_stereo_and_mono_decoders_are_cardioids() -> None:
    s = _noise()
    foa = encode_plane_wave(s, 0.7, 0.2)
    lr = stereo_decode(foa)
    torch.testing.assert_close(lr[0], virtual_microphone(foa, math.pi / 2, 0.0, "cardioid"))
    torch.testing.assert_close(lr[1], virtual_microphone(foa, -math.pi / 2, 0.0, "cardioid"))
    torch.testing.assert_close(mono_decode(foa)[0], virtual_microphone(foa, 0.0, 0.0, "cardioid"))
    left = stereo_decode(encode_plane_wave(s, math.pi / 2, 0.0))
    assert left[1].abs().max() < 1e-12  # the right cardioid nulls a source hard left


def test_fuma_to_ambix() -> None:
    s = _noise()
    ambix = encode_plane_wave(s, 1.1, -0.4)
    w, y, z, x = ambix
    fuma = torch.stack((w / math.sqrt(2), x, y, z))
    torch.testing.assert_close(fuma_to_ambix(fuma), ambix)


@pytest.mark.parametrize(("az_deg", "el_deg"), [(0, 0), (120, 35), (-75, -50), (179, 10), (30, 85)])
def test_pyroomacoustics_spherical_harmonics_peer(az_deg: float, el_deg: float) -> None:
    """A free-field source picked up by pyroomacoustics' real (orthonormal, N3D-like) SH directivities.

    Orthonormal SH: Y00 = 1/√(4π), first order √3 times SN3D. Scaled by √(4π) and with channels 1–3
    divided by √3, the four impulse responses must be our plane-wave encoding of the W response.
    """
    pra = pytest.importorskip("pyroomacoustics")
    from pyroomacoustics.directivities.harmonics import (
        RealSphericalHarmonicsDirectivity,
        get_mn_in_acn_order,
    )

    az, el = math.radians(az_deg), math.radians(el_deg)
    room = pra.AnechoicRoom(dim=3, fs=24000)
    room.add_source(3.0 * direction_vector(az, el).numpy())
    for m, n in zip(*get_mn_in_acn_order(1), strict=True):
        room.add_microphone(np.zeros(3), directivity=RealSphericalHarmonicsDirectivity(m, n))
    room.compute_rir()
    length = min(len(r[0]) for r in room.rir)
    rirs = np.stack([np.asarray(r[0][:length]) for r in room.rir])
    sn3d = torch.from_numpy(
        rirs * math.sqrt(4 * math.pi) * np.array([[1.0], [3**-0.5], [3**-0.5], [3**-0.5]])
    )
    torch.testing.assert_close(encode_plane_wave(sn3d[0], az, el), sn3d, atol=1e-6, rtol=1e-6)
