"""Audio features of (steered) FOA, computed on the tensor's device and batched over any leading dims.

Feature sets (channel count C, each ``[F = n_mels, T = frames]``):

- ``logmel`` (4): log-mel magnitude of W, Y, Z, X.
- ``logmel_iv`` (7): those plus the mel-pooled normalised intensity vector (Y, Z, X), as in the DCASE
  SELD baseline: I = Re{conj(W)·(Y, Z, X)}, E = |W|² + (|Y|² + |Z|² + |X|²)/3, feature = mel(I/E).
- ``stereo`` (3): log-mel of back-to-back cardioids L = W + Y, R = W − Y, plus frame-wise GCC-PHAT of
  (L, R) over the central ``n_mels`` lags, so it stacks with the mel channels (the DCASE baseline's
  choice; REFERENCE.md's 64 lags is that at 64 mels).
- ``mono`` (1): log-mel of the front cardioid W + X (the viewpoint, once steered).

Steering and the decoders are linear channel mixes, so they commute with the STFT: the extractor takes
one STFT per clip and steers its spectrum toward each of the K viewpoints, instead of K STFTs. Steering
leaves W and the energy E unchanged and rotates the intensity vector, so the W log-mel and mel(I/E)
are computed once per clip too, the latter then rotated per viewpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from dataloading.feature_stats import FeatureStats
from dataloading.foa import steering_matrix
from dataloading.mel import MelScale, mel_filterbank

Feature = Literal["logmel", "logmel_iv", "stereo", "mono"]
CHANNELS: dict[str, int] = {"logmel": 4, "logmel_iv": 7, "stereo": 3, "mono": 1}
_SETTINGS = ("sample_rate", "n_fft", "hop", "n_mels", "mel_scale", "top_db", "feature")

# Magnitude floor for the dB conversion: 1e-5 is −100 dB, the same as the default top_db range.
_AMIN = 1e-5
# Keeps I/E finite in silent bins.
_EPS = 1e-8
# Mel bands per block of the banded mel product (see FeatureExtractor._mel); 16 measured fastest on CPU.
_MEL_BLOCK = 16


def stft(x: Tensor, n_fft: int = 512, hop: int = 240) -> Tensor:
    """Complex STFT (periodic Hann window, centred, reflect-padded) of ``x`` ``[..., N]`` samples.

    Returns ``[..., n_fft // 2 + 1, frames]`` with ``frames = N // hop + 1``.
    """
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    flat = x.reshape(-1, x.shape[-1])
    spec = torch.stft(flat, n_fft, hop_length=hop, window=window, center=True, return_complex=True)
    return spec.reshape(*x.shape[:-1], *spec.shape[-2:])


def intensity_doa(foa: Tensor, n_fft: int = 512, hop: int = 240) -> tuple[Tensor, Tensor]:
    """Broadband direction of arrival (azimuth, elevation) in radians of FOA ``[..., 4, N]``.

    The direction of the sum of the active intensity vectors Re{conj(W)·(Y, Z, X)} over all
    time-frequency bins, i.e. their energy-weighted mean direction. Returns two tensors of shape
    ``foa.shape[:-2]``.
    """
    spec = stft(foa, n_fft, hop)
    intensity = (spec[..., :1, :, :].conj() * spec[..., 1:, :, :]).real.sum((-2, -1))
    i_y, i_z, i_x = intensity.unbind(-1)
    return torch.atan2(i_y, i_x), torch.atan2(i_z, torch.hypot(i_x, i_y))


def amplitude_to_db(magnitude: Tensor, top_db: float | None = 100.0, reduce_dims: int = 3) -> Tensor:
    """20·log10 of a magnitude (floored at −100 dB), clipped to ``top_db`` below the maximum.

    The maximum is taken jointly over the last ``reduce_dims`` dims (by default channels × mels × frames),
    so level differences between the channels of one viewpoint, a spatial cue, survive the clipping.
    """
    return _to_db_(magnitude.clone(), top_db, reduce_dims)


def _to_db_(magnitude: Tensor, top_db: float | None, reduce_dims: int) -> Tensor:
    """In-place :func:`amplitude_to_db`; clips in the linear domain (log is monotonic) to save passes."""
    floor: Tensor | float = _AMIN
    if top_db is not None:
        peak = magnitude.amax(dim=tuple(range(-reduce_dims, 0)), keepdim=True)
        floor = (peak * 10.0 ** (-top_db / 20.0)).clamp_min_(_AMIN)
    return magnitude.clamp_(min=floor).log10_().mul_(20.0)


def gcc_phat(cross: Tensor, n_lags: int) -> Tensor:
    """Frame-wise GCC-PHAT from a cross spectrum X_a·conj(X_b) ``[..., F, T]`` (F = n_fft // 2 + 1).

    Returns the central ``n_lags`` lags ``[..., n_lags, T]``; row i is lag i − n_lags // 2 samples.
    A peak at lag k means a(t + k) lines up with b(t), i.e. k = (arrival time at a) − (arrival time at b).
    """
    n_fft = 2 * (cross.shape[-2] - 1)
    cc = torch.fft.irfft(cross / cross.abs().clamp_min(_EPS), n=n_fft, dim=-2)
    half = n_lags // 2
    return torch.cat((cc[..., n_fft - half :, :], cc[..., : n_lags - half, :]), dim=-2)


class FeatureExtractor:
    """Steered-FOA features ``[..., C, n_mels, frames]`` on the input's device.

    Built from the loader's settings (sample rate in Hz, FFT size and hop in samples, mel count and scale,
    dB range, feature set). The mel filterbank (and the statistics) are moved to a device once and
    cached there. With ``stats`` (per channel × mel mean and std, see :mod:`dataloading.feature_stats`)
    the output is standardised.
    """

    def __init__(
        self,
        sample_rate: int = 24000,
        n_fft: int = 512,
        hop: int = 240,
        n_mels: int = 128,
        mel_scale: MelScale = "slaney",
        top_db: float | None = 100.0,
        feature: Feature = "logmel",
        stats: FeatureStats | None = None,
    ) -> None:
        if feature not in CHANNELS:
            raise ValueError(f"unknown feature {feature!r}; expected one of {sorted(CHANNELS)}")
        self.sample_rate, self.n_fft, self.hop, self.n_mels = sample_rate, n_fft, hop, n_mels
        self.mel_scale, self.top_db, self.feature = mel_scale, top_db, feature
        self.stats = stats
        self._cache: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}
        # Each triangle covers few FFT bins, so the product is done per block of bands over just the
        # bins those bands touch: (first band, end band, first bin, end bin), fixed once per extractor.
        fb = mel_filterbank(sample_rate, n_fft, n_mels, scale=mel_scale, dtype=torch.float64)
        self._filterbank = fb.T.contiguous()
        support = self._filterbank > 0
        self._blocks = []
        for start in range(0, n_mels, _MEL_BLOCK):
            bins = support[start : start + _MEL_BLOCK].any(0).nonzero().flatten()
            lo, hi = (int(bins.min()), int(bins.max()) + 1) if len(bins) else (0, 1)
            self._blocks.append((start, min(start + _MEL_BLOCK, n_mels), lo, hi))

    @classmethod
    def from_config(cls, cfg: object, stats: FeatureStats | None = None) -> FeatureExtractor:
        """Build from a :class:`dataloading.config.DataConfig` (or anything with the same fields)."""
        return cls(**{name: getattr(cfg, name) for name in _SETTINGS}, stats=stats)

    @property
    def channels(self) -> int:
        """Number of feature channels C."""
        return CHANNELS[self.feature]

    def frames(self, n_samples: int) -> int:
        """Number of STFT frames T for ``n_samples`` samples."""
        return n_samples // self.hop + 1

    @property
    def settings(self) -> dict[str, Any]:
        """The settings that normalisation statistics depend on (recorded with them)."""
        return {name: getattr(self, name) for name in _SETTINGS}

    def _cached(
        self, name: str, device: torch.device, dtype: torch.dtype, build: Callable[[], Tensor]
    ) -> Tensor:
        key = (name, torch.device(device), dtype)
        if key not in self._cache:
            self._cache[key] = build().to(device=device, dtype=dtype)
        return self._cache[key]

    def filterbank(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The ``[n_mels, n_fft // 2 + 1]`` mel matrix on ``device``, copied there on first use."""
        return self._cached("filterbank", device, dtype, lambda: self._filterbank)

    def unnormalised(self) -> FeatureExtractor:
        """A copy without statistics, for computing them (:func:`dataloading.feature_stats.compute_stats`)."""
        return FeatureExtractor(**self.settings)

    def __call__(
        self, foa: Tensor, azimuth: Tensor | float | None = None, elevation: Tensor | float | None = None
    ) -> Tensor:
        """Features of FOA ``[..., 4, N]``, optionally steered toward (azimuth, elevation) in radians first.

        The angles broadcast against ``foa.shape[:-2]``: pass ``foa[B, 1, 4, N]`` with angles ``[B, K]``
        to get ``[B, K, C, F, T]`` from one STFT per clip. Without angles ``foa`` is used as it is.
        """
        matrix = None
        if azimuth is not None:
            az = torch.as_tensor(azimuth, dtype=foa.dtype, device=foa.device)
            el = torch.as_tensor(0.0 if elevation is None else elevation, dtype=foa.dtype, device=foa.device)
            matrix = steering_matrix(az, el)
        # A real view ([..., 4, freq, T, 2]) of the spectrum keeps every later step a real matmul or
        # elementwise op, with no copy into separate real and imaginary tensors (measured slower).
        out = self._features(torch.view_as_real(stft(foa, self.n_fft, self.hop)), matrix)
        if self.stats is not None:
            stats = self.stats
            mean = self._cached("mean", out.device, out.dtype, lambda: stats.tensors()[0][..., None])
            std = self._cached("std", out.device, out.dtype, lambda: stats.tensors()[1][..., None])
            out = (out - mean) / std
        return out

    def _mel_magnitude(self, spec: Tensor, out: Tensor | None = None) -> Tensor:
        """Mel-pooled magnitude ``[..., c, n_mels, T]`` of a real-viewed spectrum ``[..., c, freq, T, 2]``."""
        real, imag = spec.unbind(-1)
        return self._mel(real.square().addcmul_(imag, imag).sqrt_(), out)

    def _mel(self, spectrum: Tensor, out: Tensor | None = None) -> Tensor:
        """Mel pooling ``[..., freq, T]`` -> ``[..., n_mels, T]`` (into ``out`` if given), exactly fb @ x."""
        fb = self.filterbank(spectrum.device, spectrum.dtype)
        if out is None:
            out = spectrum.new_empty((*spectrum.shape[:-2], self.n_mels, spectrum.shape[-1]))
        for m0, m1, lo, hi in self._blocks:
            out[..., m0:m1, :] = fb[m0:m1, lo:hi] @ spectrum[..., lo:hi, :]
        return out

    def _features(self, spec: Tensor, matrix: Tensor | None) -> Tensor:
        """Features ``[..., C, n_mels, T]`` from a real-viewed STFT ``[..., 4, freq, T, 2]`` and steering.

        Output channels are written straight into one preallocated tensor: with K viewpoints sharing a
        clip, concatenating would copy the largest tensors once more.
        """
        if self.feature in ("logmel", "logmel_iv"):
            # Steering never changes W, so only the (Y, Z, X) rows are mixed per viewpoint. They take all
            # four input channels (W's column is zero) so the clip spectrum is read in place, not copied.
            mixed = spec[..., 1:, :, :, :] if matrix is None else _mix(matrix[..., 1:, :], spec)
            out = spec.new_empty((*mixed.shape[:-4], self.channels, self.n_mels, mixed.shape[-2]))
            self._mel_magnitude(mixed, out[..., 1:4, :, :])
            out[..., :1, :, :] = self._mel_magnitude(spec[..., :1, :, :, :])
            _to_db_(out[..., :4, :, :], self.top_db, 3)
            if self.feature == "logmel_iv":
                # The intensity vector rotates with the field, E is rotation invariant and mel pooling is
                # linear, so mel(I/E) is computed once per clip and rotated per viewpoint.
                (w_re, w_im), (v_re, v_im) = (
                    spec[..., :1, :, :, :].unbind(-1),
                    spec[..., 1:, :, :, :].unbind(-1),
                )
                intensity = (w_re * v_re).addcmul_(w_im, v_im)  # Re{conj(W)·V}: [..., 3, freq, T]
                real, imag = spec.unbind(-1)
                power = real.square().addcmul_(imag, imag)
                energy = power[..., 0, :, :] + power[..., 1:, :, :].sum(-3) / 3.0 + _EPS
                iv = self._mel(intensity / energy.unsqueeze(-3))
                rotation = None if matrix is None else matrix[..., 1:, 1:]
                out[..., 4:, :, :] = _mix(rotation, iv.unsqueeze(-3)).squeeze(-3)
            return out
        decoder = self._cached("decoder", spec.device, spec.dtype, lambda: _DECODERS[self.feature])
        mixed = _mix(decoder if matrix is None else decoder @ matrix, spec)  # decode after steering
        logmel = _to_db_(self._mel_magnitude(mixed), self.top_db, 3)
        if self.feature == "mono":
            return logmel
        (left_re, left_im), (right_re, right_im) = (mixed[..., c, :, :, :].unbind(-1) for c in (0, 1))
        cross = torch.complex(
            left_re * right_re + left_im * right_im, left_im * right_re - left_re * right_im
        )
        return torch.cat((logmel, gcc_phat(cross, self.n_mels).unsqueeze(-3)), -3)


# Decoders applied to the steered field: back-to-back cardioids (W ± Y) and the front cardioid (W + X).
_DECODERS = {
    "stereo": torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]]),
    "mono": torch.tensor([[1.0, 0.0, 0.0, 1.0]]),
}


def _mix(matrix: Tensor | None, x: Tensor) -> Tensor:
    """Mix channels: ``matrix [..., c, d]`` times ``x [..., d, a, b, e]`` -> ``[..., c, a, b, e]``.

    ``None`` is the identity. When ``x`` is one clip shared by K viewpoints (``[..., 1, d, ...]``
    against matrices ``[..., K, c, d]``) the K matrices are stacked into one, because a broadcast
    matmul would first copy the clip's spectrum K times.
    """
    if matrix is None:
        return x
    flat = x.flatten(-3)  # [..., d, a·b·e]
    lead = flat.shape[:-3]
    if flat.dim() >= 3 and flat.shape[-3] == 1 and matrix.dim() == flat.dim() and matrix.shape[:-3] == lead:
        out = (matrix.flatten(-3, -2) @ flat.squeeze(-3)).unflatten(-2, matrix.shape[-3:-1])
    else:
        out = matrix @ flat
    return out.unflatten(-1, x.shape[-3:])
