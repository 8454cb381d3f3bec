"""Mel scales and triangular mel filterbanks (the Slaney and HTK conventions, chosen explicitly)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from dataloading.config import MelScale

# Slaney's Auditory Toolbox scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above.
_SLANEY_F_SP = 200.0 / 3.0
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
_SLANEY_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(hz: Tensor, scale: MelScale = "slaney") -> Tensor:
    """Frequency in Hz to mels on the given scale."""
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    linear = hz / _SLANEY_F_SP
    log = (
        _SLANEY_MIN_LOG_MEL
        + torch.log(hz.clamp_min(_SLANEY_MIN_LOG_HZ) / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
    )
    return torch.where(hz >= _SLANEY_MIN_LOG_HZ, log, linear)


def mel_to_hz(mel: Tensor, scale: MelScale = "slaney") -> Tensor:
    """Mels on the given scale to frequency in Hz (inverse of :func:`hz_to_mel`)."""
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    linear = mel * _SLANEY_F_SP
    log = _SLANEY_MIN_LOG_HZ * torch.exp(_SLANEY_LOGSTEP * (mel - _SLANEY_MIN_LOG_MEL))
    return torch.where(mel >= _SLANEY_MIN_LOG_MEL, log, linear)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    scale: MelScale = "slaney",
    area_norm: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Triangular mel filterbank ``[n_fft // 2 + 1, n_mels]`` (multiply a ``[..., T, freq]`` spectrum by it).

    Band edges are equally spaced in mels between ``f_min`` and ``f_max`` (Hz, default Nyquist); each
    triangle rises from its lower to its centre edge and falls to its upper edge, linearly in Hz.
    ``area_norm`` scales each triangle by 2 / bandwidth in Hz (Slaney's equal-area normalisation), so
    bands of different width carry comparable energy; this matches librosa's defaults for ``"slaney"``.
    """
    f_max = sample_rate / 2.0 if f_max is None else f_max
    freqs = torch.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1, dtype=torch.float64)
    mel_edges = torch.linspace(
        hz_to_mel(torch.tensor(f_min, dtype=torch.float64), scale).item(),
        hz_to_mel(torch.tensor(f_max, dtype=torch.float64), scale).item(),
        n_mels + 2,
        dtype=torch.float64,
    )
    hz_edges = mel_to_hz(mel_edges, scale)
    lower, centre, upper = hz_edges[:-2], hz_edges[1:-1], hz_edges[2:]
    rising = (freqs[:, None] - lower) / (centre - lower)
    falling = (upper - freqs[:, None]) / (upper - centre)
    weights = torch.minimum(rising, falling).clamp_min(0.0)
    empty = int((weights.sum(0) == 0).sum())
    if empty:
        # Bands narrower than the FFT bin spacing catch no bin and stay silent (at the dB floor).
        warnings.warn(
            f"{empty} of {n_mels} mel bands are empty at n_fft={n_fft}, {sample_rate} Hz", stacklevel=2
        )
    if area_norm:
        weights = weights * (2.0 / (upper - lower))
    return weights.to(device=device, dtype=dtype)
