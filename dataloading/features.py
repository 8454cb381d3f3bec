"""Audio features of (steered) FOA, computed on the tensor's device and batched over any leading dims."""

from __future__ import annotations

import torch
from torch import Tensor


def stft(x: Tensor, n_fft: int = 512, hop: int = 240) -> Tensor:
    """Complex STFT (periodic Hann window, centred, reflect-padded) of ``x`` ``[..., N]`` samples.

    Returns ``[..., n_fft // 2 + 1, frames]``.
    """
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    flat = x.reshape(-1, x.shape[-1])
    spec = torch.stft(flat, n_fft, hop_length=hop, window=window, center=True, return_complex=True)
    return spec.reshape(*x.shape[:-1], *spec.shape[-2:])


def intensity_vectors(spec: Tensor) -> Tensor:
    """Active intensity Re{conj(W)·(Y, Z, X)} per time-frequency bin of an FOA STFT ``[..., 4, F, T]``.

    Returns ``[..., 3, F, T]`` in ACN order (Y, Z, X); it points toward the source (direction of arrival).
    """
    return (spec[..., :1, :, :].conj() * spec[..., 1:, :, :]).real


def intensity_doa(foa: Tensor, n_fft: int = 512, hop: int = 240) -> tuple[Tensor, Tensor]:
    """Broadband direction of arrival (azimuth, elevation) in radians of FOA ``[..., 4, N]``.

    The direction of the sum of the intensity vectors over all time-frequency bins, i.e. their
    energy-weighted mean direction. Returns two tensors of shape ``foa.shape[:-2]``.
    """
    i_y, i_z, i_x = intensity_vectors(stft(foa, n_fft, hop)).sum((-2, -1)).unbind(-1)
    return torch.atan2(i_y, i_x), torch.atan2(i_z, torch.hypot(i_x, i_y))
