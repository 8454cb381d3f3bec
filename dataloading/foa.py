"""First-order ambisonics (FOA) in ACN channel order (W, Y, Z, X) with SN3D normalisation (AmbiX).

Conventions (shared/DESIGN.md): azimuth φ counter-clockwise from the front (+X) toward the left (+Y),
elevation ν up (+Z), both in radians. A plane wave from unit direction d = (cosφ cosν, sinφ cosν, sinν)
carrying signal s encodes to W = s and (X, Y, Z) = s·d, so the first-order channels transform like
a direction vector under rotation and W is rotation invariant.

Every function is batched over leading dimensions, works on any device and accepts angles as Python
floats or tensors broadcastable to the batch shape.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: ACN channel of each Cartesian axis: (X, Y, Z) live at channels (3, 1, 2).
CARTESIAN_CHANNELS = (3, 1, 2)

#: Virtual-microphone presets: the omni weight p of p·omni + (1 − p)·figure-8.
#: In 3D at first order the max-rE weighting (g1 = 1/√3) and the supercardioid (maximum front-to-back
#: ratio) coincide at p = (√3 − 1)/2; both names are kept because both appear in the literature.
PATTERNS: dict[str, float] = {
    "omni": 1.0,
    "cardioid": 0.5,
    "supercardioid": (math.sqrt(3.0) - 1.0) / 2.0,
    "max_re": 1.0 / (1.0 + math.sqrt(3.0)),
    "hypercardioid": 0.25,
    "figure8": 0.0,
}


def _angle(value: float | Tensor, like: Tensor) -> Tensor:
    """An angle as a tensor on ``like``'s device with its (floating) dtype."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def broadcast_angles(*values: float | Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, ...]:
    """Angles as broadcast float tensors on the device of the first tensor among them (else CPU).

    The dtype is ``dtype``, else that of the first floating tensor among them, else torch's default.
    """
    device = next((v.device for v in values if isinstance(v, Tensor)), torch.device("cpu"))
    floats = (v.dtype for v in values if isinstance(v, Tensor) and v.is_floating_point())
    dtype = dtype or next(floats, torch.get_default_dtype())
    return torch.broadcast_tensors(*(torch.as_tensor(v, dtype=dtype, device=device) for v in values))


def direction_vector(azimuth: float | Tensor, elevation: float | Tensor) -> Tensor:
    """Unit vector(s) (x, y, z), shape ``[..., 3]``, for azimuth/elevation in radians."""
    az, el = broadcast_angles(azimuth, elevation)
    return torch.stack((torch.cos(az) * torch.cos(el), torch.sin(az) * torch.cos(el), torch.sin(el)), -1)


def encode_plane_wave(signal: Tensor, azimuth: float | Tensor, elevation: float | Tensor) -> Tensor:
    """Encode a mono plane wave arriving from (azimuth, elevation) in radians.

    ``signal`` is ``[..., N]`` samples; the angles broadcast against ``signal.shape[:-1]``.
    Returns ``[..., 4, N]`` in ACN/SN3D: W = s, Y = s·sinφcosν, Z = s·sinν, X = s·cosφcosν.
    """
    az = _angle(azimuth, signal)
    el = _angle(elevation, signal)
    gains = torch.stack(
        torch.broadcast_tensors(
            torch.ones_like(az), torch.sin(az) * torch.cos(el), torch.sin(el), torch.cos(az) * torch.cos(el)
        ),
        -1,
    )  # [..., 4] in ACN order
    return gains.unsqueeze(-1) * signal.unsqueeze(-2)


def fuma_to_ambix(x: Tensor) -> Tensor:
    """Convert first-order FuMa (W, X, Y, Z; W at −3 dB) to AmbiX (ACN W, Y, Z, X; SN3D).

    At first order FuMa's X, Y, Z already have SN3D gains; only W is scaled by √2 and the channels reordered.
    ``x`` is ``[..., 4, N]``.
    """
    w, fx, fy, fz = x.unbind(-2)
    return torch.stack((w * math.sqrt(2.0), fy, fz, fx), -2)


def _rot_x(angle: Tensor) -> Tensor:
    c, s, o, i = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack((i, o, o, o, c, -s, o, s, c), -1).unflatten(-1, (3, 3))


def _rot_y(angle: Tensor) -> Tensor:
    c, s, o, i = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack((c, o, s, o, i, o, -s, o, c), -1).unflatten(-1, (3, 3))


def _rot_z(angle: Tensor) -> Tensor:
    c, s, o, i = torch.cos(angle), torch.sin(angle), torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack((c, -s, o, s, c, o, o, o, i), -1).unflatten(-1, (3, 3))


def _foa_matrix(rotation: Tensor) -> Tensor:
    """Embed a Cartesian rotation ``[..., 3, 3]`` acting on (x, y, z) into a 4×4 ACN matrix (W untouched)."""
    out = rotation.new_zeros((*rotation.shape[:-2], 4, 4))
    out[..., 0, 0] = 1.0
    idx = torch.tensor(CARTESIAN_CHANNELS, device=rotation.device)
    out[..., idx.unsqueeze(-1), idx] = rotation
    return out


def rotation_matrix(
    yaw: float | Tensor, pitch: float | Tensor, roll: float | Tensor, dtype: torch.dtype | None = None
) -> Tensor:
    """Batched 4×4 ACN rotation of the sound field, angles in radians.

    The field is rotated actively by R = R_x(roll)·R_y(pitch)·R_z(yaw) (right-handed rotations about the
    fixed axes, applied yaw first): a source at unit direction d moves to R·d. So a positive yaw moves
    sources toward the left (azimuth grows), and a positive pitch moves a frontal source down (right-handed
    about +Y, which points left). Apply with ``matrix @ foa`` for ``foa`` of shape ``[..., 4, N]``.
    """
    yaw_t, pitch_t, roll_t = broadcast_angles(yaw, pitch, roll, dtype=dtype)
    return _foa_matrix(_rot_x(roll_t) @ _rot_y(pitch_t) @ _rot_z(yaw_t))


def steering_matrix(
    azimuth: float | Tensor, elevation: float | Tensor, dtype: torch.dtype | None = None
) -> Tensor:
    """4×4 ACN matrix that rotates the field so direction (azimuth, elevation) lands on the front (+X).

    It is R_y(ν)·R_z(−φ): first undo the azimuth about the vertical, then tilt the now-frontal
    direction down onto the horizon. (Composing the two the other way round, as the NeurIPS reference
    code does, tilts about the wrong axis whenever φ ≠ 0 and misses the target off the horizon.)
    """
    az, el = broadcast_angles(azimuth, elevation, dtype=dtype)
    return rotation_matrix(-az, el, 0.0)


def steer(foa: Tensor, azimuth: float | Tensor, elevation: float | Tensor) -> Tensor:
    """Rotate ``foa`` ``[..., 4, N]`` so (azimuth, elevation) in radians becomes the front direction.

    The angles broadcast against ``foa.shape[:-2]``; e.g. ``foa[B, 1, 4, N]`` with angles ``[B, K]``
    yields K steered copies per clip, ``[B, K, 4, N]``.
    """
    matrix = steering_matrix(_angle(azimuth, foa), _angle(elevation, foa), dtype=foa.dtype)
    return matrix @ foa


def beam_weights(
    azimuth: float | Tensor, elevation: float | Tensor, pattern: float | str = "cardioid"
) -> Tensor:
    """ACN weights ``[..., 4]`` of a first-order virtual microphone; see :func:`virtual_microphone`."""
    p = PATTERNS[pattern] if isinstance(pattern, str) else float(pattern)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"pattern weight must be in [0, 1], got {p}")
    d = direction_vector(azimuth, elevation)  # [..., 3] in (x, y, z)
    return 2.0 * torch.cat((torch.full_like(d[..., :1], p), (1.0 - p) * d[..., [1, 2, 0]]), -1)


def virtual_microphone(
    foa: Tensor, azimuth: float | Tensor, elevation: float | Tensor, pattern: float | str = "cardioid"
) -> Tensor:
    """A first-order virtual microphone aimed at (azimuth, elevation) in radians; returns ``[..., N]``.

    The pattern is p·omni + (1 − p)·figure-8 with p in [0, 1] (or a name from :data:`PATTERNS`).
    Gain convention: the output is 2·(p·W + (1 − p)·d·(X, Y, Z)) for look direction d, so every
    pattern has gain 2 on axis for a plane wave in SN3D, and the cardioid is exactly the classic sum
    W + d·(X, Y, Z) (gain 2 toward the source, a null behind) used by :func:`stereo_decode` and
    :func:`mono_decode`.
    """
    weights = beam_weights(_angle(azimuth, foa), _angle(elevation, foa), pattern)
    return (weights.unsqueeze(-2) @ foa).squeeze(-2)


def stereo_decode(foa: Tensor) -> Tensor:
    """Back-to-back cardioids facing left (+Y) and right (−Y): L = W + Y, R = W − Y; ``[..., 2, N]``."""
    w, y = foa[..., 0, :], foa[..., 1, :]
    return torch.stack((w + y, w - y), -2)


def mono_decode(foa: Tensor) -> Tensor:
    """A cardioid facing the front, W + X, as ``[..., 1, N]``; on steered FOA it faces the viewpoint."""
    return (foa[..., 0, :] + foa[..., 3, :]).unsqueeze(-2)
