"""360° geometry: equirectangular pixels <-> directions, and gnomonic (rectilinear) crops of a viewpoint.

Conventions (shared/DESIGN.md): normalised equirect coordinates x, y ∈ [0, 1] (x right, y down), with
azimuth φ = (1 − 2x)π and elevation ν = (1 − 2y)π/2, so the image centre is the front and the image's
left half holds positive azimuths. Angles are radians. A viewpoint camera looks along the direction that
:func:`dataloading.foa.steer` brings to the front, so a crop and the steered audio share one frame:
image right is −Y (the listener's right) and image up is +Z.

Seam and poles: :func:`gnomonic_grid` maps the full equirect width onto grid_sample's x ∈ [−1, 1], so
a sample near ±180° would interpolate with the zero/border padding. :func:`crop` therefore pads the image
with wrapped columns (:func:`wrap_pad`) and rescales x accordingly; rows are clamped at the poles
(``padding_mode="border"``), which is exact to half a pixel.

The loader's K views of a clip: :func:`crop_views` on the CPU, or DALI's remap on the GPU with the
maps of :func:`stacked_remap_maps`, whose output :func:`unstack_remapped` brings to the same layout.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dataloading.foa import CARTESIAN_CHANNELS, broadcast_angles, steering_matrix


def equirect_to_direction(x: Tensor | float, y: Tensor | float) -> tuple[Tensor, Tensor]:
    """Normalised equirect coordinates (x, y ∈ [0, 1]) to (azimuth, elevation) in radians."""
    x_t, y_t = torch.as_tensor(x), torch.as_tensor(y)
    return (1.0 - 2.0 * x_t) * math.pi, (1.0 - 2.0 * y_t) * (math.pi / 2.0)


def direction_to_equirect(azimuth: Tensor | float, elevation: Tensor | float) -> tuple[Tensor, Tensor]:
    """(azimuth, elevation) in radians to normalised equirect (x, y); x wraps into [0, 1)."""
    az, el = torch.as_tensor(azimuth), torch.as_tensor(elevation)
    return torch.remainder(0.5 - az / (2.0 * math.pi), 1.0), 0.5 - el / math.pi


def _camera_rays(hfov: Tensor, out_h: int, out_w: int, aspect: float) -> Tensor:
    """Unit-depth rays ``[..., H, W, 3]`` through pixel centres of a pinhole camera looking along +X."""
    half_w = torch.tan(hfov / 2.0)[..., None, None]
    half_h = half_w / aspect
    cols = (torch.arange(out_w, dtype=hfov.dtype, device=hfov.device) + 0.5) * (2.0 / out_w) - 1.0
    rows = (torch.arange(out_h, dtype=hfov.dtype, device=hfov.device) + 0.5) * (2.0 / out_h) - 1.0
    u = (half_w * cols).expand(*half_w.shape[:-2], out_h, out_w)  # rightwards
    v = (half_h * rows[:, None]).expand(*half_w.shape[:-2], out_h, out_w)  # downwards
    # image right is −Y (the camera's right when facing +X with +Z up), image down is −Z
    return torch.stack((torch.ones_like(u), -u, -v), -1)


def gnomonic_directions(
    azimuth: Tensor | float,
    elevation: Tensor | float,
    hfov: Tensor | float,
    out_h: int,
    out_w: int,
    aspect: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Directions (azimuth, elevation) ``[..., H, W]`` in radians seen by each pixel of a gnomonic view.

    The view looks at (azimuth, elevation) with horizontal field of view ``hfov`` (radians) and pixel
    aspect ``aspect`` = width/height of the view (default ``out_w / out_h``, i.e. square pixels).
    """
    az, el, fov = broadcast_angles(azimuth, elevation, hfov)
    rays = _camera_rays(fov, out_h, out_w, aspect or out_w / out_h)
    # The steering matrix brings (az, el) to the front; its transpose takes camera rays back to the world.
    xyz = list(CARTESIAN_CHANNELS)
    rotation = steering_matrix(az, el, dtype=rays.dtype)[..., xyz, :][..., xyz]
    world = torch.einsum("...ji,...hwj->...hwi", rotation, rays)
    x, y, z = world.unbind(-1)
    return torch.atan2(y, x), torch.atan2(z, torch.hypot(x, y))


def gnomonic_grid(
    azimuth: Tensor | float,
    elevation: Tensor | float,
    hfov: Tensor | float,
    aspect: float | None,
    out_h: int,
    out_w: int,
) -> Tensor:
    """Sampling grid ``[..., H, W, 2]`` for ``grid_sample(..., align_corners=False)`` on an equirect image.

    Values are (x, y) in [−1, 1] over the *unpadded* image. To sample across the ±180° seam, pad the
    image with :func:`wrap_pad` and scale x by W / (W + 2·pad) — :func:`crop` does exactly that.
    """
    az, el = gnomonic_directions(azimuth, elevation, hfov, out_h, out_w, aspect)
    return torch.stack((-az / math.pi, -2.0 * el / math.pi), -1)


def wrap_pad(equirect: Tensor, pad: int = 1) -> Tensor:
    """Pad the width (last dim) of an equirect image with ``pad`` columns wrapped from the other side."""
    return torch.cat((equirect[..., -pad:], equirect, equirect[..., :pad]), -1)


def crop(
    equirect: Tensor,
    azimuth: Tensor | float,
    elevation: Tensor | float,
    hfov: Tensor | float,
    size: int | tuple[int, int],
    mode: str = "bilinear",
) -> Tensor:
    """Gnomonic crops of float equirect images with ``torch.nn.functional.grid_sample``.

    ``equirect`` is ``[B, ..., H, W]`` (e.g. ``[B, C, H, W]`` or ``[B, C, T, H, W]``: every middle dim
    is sampled alike). Angles and ``hfov`` (radians) are ``[B]`` for one view per image or ``[B, K]``
    for K views (or broadcast to those; scalars mean the same for every image); ``size`` is the output side or
    (height, width) in pixels. Returns ``[B, ..., h, w]`` or ``[B, K, ..., h, w]``.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    batch, *middle, in_h, in_w = equirect.shape
    # Angles go to the image's device first, so the grid is built where it is sampled.
    az, el, fov = broadcast_angles(
        *(torch.as_tensor(v, device=equirect.device) for v in (azimuth, elevation, hfov))
    )
    single = az.dim() <= 1
    az, el, fov = (v.expand(batch) if v.dim() == 0 else v for v in (az, el, fov))
    az, el, fov = (v.reshape(batch, -1) for v in (az, el, fov))
    grid = gnomonic_grid(az, el, fov, None, out_h, out_w).to(device=equirect.device, dtype=equirect.dtype)
    pad = 1
    grid[..., 0] *= in_w / (in_w + 2 * pad)
    views = grid.shape[1]
    # K views of one image are stacked along the grid's height, so the image is never copied K times.
    sampled = F.grid_sample(
        wrap_pad(equirect.reshape(batch, -1, in_h, in_w), pad),
        grid.reshape(batch, views * out_h, out_w, 2),
        mode=mode,
        padding_mode="border",
        align_corners=False,
    )
    out = sampled.unflatten(-2, (views, out_h)).movedim(2, 1).reshape(batch, views, *middle, out_h, out_w)
    return out[:, 0] if single else out


def remap_maps(
    azimuth: Tensor | float,
    elevation: Tensor | float,
    hfov: Tensor | float,
    out_h: int,
    out_w: int,
    in_h: int,
    in_w: int,
    pad: int = 1,
) -> tuple[Tensor, Tensor]:
    """Absolute pixel maps (mapx, mapy) ``[..., out_h, out_w]`` float32 for DALI's ``fn.experimental.remap``.

    For ``pixel_origin="corner"`` (DALI's default: pixel i spans [i, i + 1)) on the equirect image
    padded with ``pad`` wrapped columns per side (:func:`wrap_pad`), since remap's border is a constant 0.
    mapy is clamped half a pixel inside the image, matching grid_sample's ``padding_mode="border"``, so
    the same maps give the same crop as :func:`crop`.
    """
    grid = gnomonic_grid(azimuth, elevation, hfov, None, out_h, out_w)
    mapx = (grid[..., 0] + 1.0) * (in_w / 2.0) + pad
    mapy = ((grid[..., 1] + 1.0) * (in_h / 2.0)).clamp(0.5, in_h - 0.5)
    return mapx.float().contiguous(), mapy.float().contiguous()


def crop_views(
    frames: np.ndarray | Tensor, azimuth: Tensor, elevation: Tensor, fov: Tensor, size: int
) -> Tensor:
    """K gnomonic crops of a frame window: uint8 ``[T, H, W, 3]`` -> float ``[K, 3, T, size, size]``.

    Values in [0, 1]; angles and ``fov`` are ``[K]`` radians; bilinear (:func:`crop`).
    """
    # Channels first while still uint8: the float copy is then contiguous and crop() reshapes it for free.
    video = torch.as_tensor(frames).permute(3, 0, 1, 2).contiguous().unsqueeze(0).float()  # [1, 3, T, H, W]
    return crop(video, azimuth[None], elevation[None], fov[None], size)[0].div_(255.0)


def stacked_remap_maps(
    azimuth: Tensor, elevation: Tensor, fov: Tensor, size: int, in_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """DALI remap maps (mapx, mapy), float32 ``[K·size, size]``, of K views of an equirect image of
    ``in_size`` (width, height) pixels: the views stacked along the height (:func:`remap_maps`)."""
    width, height = in_size
    mapx, mapy = remap_maps(azimuth, elevation, fov, size, size, height, width)
    return mapx.reshape(-1, size).numpy(), mapy.reshape(-1, size).numpy()


def unstack_remapped(remapped: Tensor, views: int) -> Tensor:
    """GPU remap output uint8 ``[T, K·h, w, 3]`` -> ``[K, 3, T, h, w]``, the layout of :func:`crop_views`."""
    frames, height, width, _ = remapped.shape
    return remapped.reshape(frames, views, height // views, width, 3).permute(1, 4, 0, 2, 3)
