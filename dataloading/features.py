"""Audio features of (steered) FOA, computed on the tensor's device and batched over any leading dims.

Feature sets (channel count C, each ``[F = n_mels, T = frames]``):

- ``logmel_iv`` (7, the default): log-mel power of W, Y, Z, X plus the mel-pooled normalised intensity
  vector (Y, Z, X), as in the DCASE SELD baseline and Wang et al. (JSTSP 2022):
  I = Re{conj(W)·(Y, Z, X)}, E = |W|² + (|Y|² + |Z|² + |X|²)/3, feature = band mean of I/E.
- ``logmel`` (4): the log-mels alone. Magnitudes cannot tell a direction from its antipodal twin: the
  views (φ, ν) and (φ + π, −ν) give the same features (shared/DESIGN.md), so this set cannot localise.
- ``cardioids`` (6): log-mel power of the axis-aligned virtual cardioids W + X, W − X, W + Y, W − Y,
  W + Z, W − Z of the (steered) field: magnitude only, but the sign of every axis survives.
- ``stereo`` (3): log-mel of back-to-back cardioids L = W + Y, R = W − Y, plus frame-wise GCC-PHAT of
  (L, R) over the central ``n_mels`` lags, so it stacks with the mel channels.
- ``mono`` (1): log-mel of the front cardioid W + X (the viewpoint, once steered).

Every channel is O(1) before the dataset statistics standardise it: log-mels are in units of 20 dB
(:data:`DB_PER_UNIT`; about −5 … +0.5), the intensity vector's band means lie in [−√3/2, √3/2] and
GCC-PHAT in [−1, 1].

Log-mels are of power, the DCASE baseline's choice, because that makes steering free per FFT bin: mel
pooling is linear in power, and the power of any real mix a·S of the four channels is the quadratic form
aᵀ·Re(C)·a of the per-bin channel covariance C = S·Sᴴ. The extractor therefore takes one STFT per clip,
forms the 10 unique products of Re(C), mel-pools them once, and gets every viewpoint's channels as 4×4
quadratic forms per mel band and frame. The intensity vector and the energy are entries of the same C;
steering leaves E unchanged and rotates I, so its band means are computed once per clip and rotated per
viewpoint. Only ``stereo`` (GCC-PHAT needs the per-bin phase) mixes the spectrum per viewpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor

from dataloading.config import Feature, MelScale
from dataloading.feature_stats import FeatureStats
from dataloading.foa import steering_matrix
from dataloading.mel import mel_filterbank

CHANNELS: dict[Feature, int] = {"logmel": 4, "logmel_iv": 7, "cardioids": 6, "stereo": 3, "mono": 1}
#: The definition of the features, recorded with their statistics: bump it when a feature's values change,
#: so statistics computed by older code are refused instead of silently mis-normalising.
FEATURE_VERSION = 2


@dataclass(frozen=True)
class FeatureSettings:
    """What the audio features' values depend on: the settings training used, which an exported
    embedder and any fine-tuning pipeline must reproduce (``config.json``'s ``audio_features``)."""

    sample_rate: int = 24000  # Hz
    n_fft: int = 512  # samples
    hop: int = 240  # samples
    n_mels: int = 128
    mel_scale: MelScale = "slaney"
    top_db: float | None = 100.0  # dB below each spectrogram's peak; None: no floor
    feature: Feature = "logmel_iv"

    @classmethod
    def of(cls, source: object) -> FeatureSettings:
        """The settings of a :class:`dataloading.config.DataConfig` (or of a mapping with these keys;
        other keys are ignored)."""
        get = source.get if isinstance(source, Mapping) else lambda name: getattr(source, name)
        return cls(**{f.name: get(f.name) for f in fields(cls)})

    @property
    def channels(self) -> int:
        """Number of feature channels C (what the audio encoder's first layer takes)."""
        return CHANNELS[self.feature]


_SETTINGS = tuple(f.name for f in fields(FeatureSettings))

#: Decibels per feature unit of the log-mel channels.
DB_PER_UNIT = 20.0
# Power floor for the dB conversion: 1e-10 is −100 dB, the same as the default top_db range.
_AMIN = 1e-10
# Keeps I/E finite in silent bins.
_EPS = 1e-8
# Mel bands per block of the banded mel product (see FeatureExtractor._mel); 16 measured fastest on CPU.
_MEL_BLOCK = 16

# Rows: output channels as mixes of the (steered) ACN channels W, Y, Z, X.
_DECODERS = {
    "logmel": torch.eye(4),
    "cardioids": torch.tensor(
        [
            [1.0, 0.0, 0.0, 1.0],  # W + X: front
            [1.0, 0.0, 0.0, -1.0],  # W − X: back
            [1.0, 1.0, 0.0, 0.0],  # W + Y: left
            [1.0, -1.0, 0.0, 0.0],  # W − Y: right
            [1.0, 0.0, 1.0, 0.0],  # W + Z: up
            [1.0, 0.0, -1.0, 0.0],  # W − Z: down
        ]
    ),
    "stereo": torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]]),
    "mono": torch.tensor([[1.0, 0.0, 0.0, 1.0]]),
}
_DECODERS["logmel_iv"] = _DECODERS["logmel"]
# The 10 unique entries (i ≤ j) of the symmetric 4×4 covariance, and their weight in a quadratic form.
_PAIRS = [(i, j) for i in range(4) for j in range(i, 4)]
_ROWS, _COLS = (torch.tensor(index) for index in zip(*_PAIRS, strict=True))
_OFF_DIAGONAL = torch.tensor([1.0 if i == j else 2.0 for i, j in _PAIRS])
# Entries of C that hold Re{conj(W)·(Y, Z, X)} and the four powers.
_INTENSITY = slice(_PAIRS.index((0, 1)), _PAIRS.index((0, 3)) + 1)
assert [_PAIRS[p] for p in range(4)[_INTENSITY]] == [(0, 1), (0, 2), (0, 3)]
_POWERS = [_PAIRS.index((c, c)) for c in range(4)]


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


def power_to_db(power: Tensor, top_db: float | None = 100.0, reduce_dims: int = 3) -> Tensor:
    """10·log10 of a power (floored at −100 dB), clipped to ``top_db`` below the maximum, in dB.

    The maximum is taken jointly over the last ``reduce_dims`` dims (by default channels × mels × frames),
    so level differences between the channels of one viewpoint, a spatial cue, survive the clipping.
    """
    return _to_db_(power.clone(), top_db, reduce_dims).mul_(DB_PER_UNIT)


def _to_db_(power: Tensor, top_db: float | None, reduce_dims: int) -> Tensor:
    """In place: power -> dB / :data:`DB_PER_UNIT`; clips in the linear domain (log is monotonic)."""
    floor: Tensor | float = _AMIN
    if top_db is not None:
        peak = power.amax(dim=tuple(range(-reduce_dims, 0)), keepdim=True)
        floor = (peak * 10.0 ** (-top_db / 10.0)).clamp_min_(_AMIN)
    return power.clamp_(min=floor).log10_().mul_(10.0 / DB_PER_UNIT)


def gcc_phat(cross: Tensor, n_lags: int) -> Tensor:
    """Frame-wise GCC-PHAT from a cross spectrum X_a·conj(X_b) ``[..., F, T]`` (F = n_fft // 2 + 1).

    Returns the central ``n_lags`` lags ``[..., n_lags, T]``; row i is lag i − n_lags // 2 samples.
    A peak at lag k means a(t + k) lines up with b(t), i.e. k = (arrival time at a) − (arrival time at b).
    """
    n_fft = 2 * (cross.shape[-2] - 1)
    cc = torch.fft.irfft(cross / cross.abs().clamp_min(_EPS), n=n_fft, dim=-2)
    half = n_lags // 2
    return torch.cat((cc[..., n_fft - half :, :], cc[..., : n_lags - half, :]), dim=-2)


def covariance(spec: Tensor) -> Tensor:
    """The 10 unique entries of Re(S·Sᴴ) per bin, ``[..., 10, freq, T]``, of a complex 4-channel spectrum
    ``[..., 4, freq, T]``; entry p is channels :data:`_PAIRS` [p].

    Real and imaginary parts are made contiguous once and each product is written in place: the strided
    parts of a real view and gathered copies made this ~3× slower (memory-bound either way).
    """
    real, imag = spec.real.contiguous(), spec.imag.contiguous()
    out = real.new_empty((*real.shape[:-3], len(_PAIRS), *real.shape[-2:]))
    for p, (i, j) in enumerate(_PAIRS):
        entry = out[..., p, :, :]
        torch.mul(real[..., i, :, :], real[..., j, :, :], out=entry)
        entry.addcmul_(imag[..., i, :, :], imag[..., j, :, :])
    return out


def quadratic_weights(mix: Tensor) -> Tensor:
    """Weights ``[..., c, 10]`` over the covariance entries such that weights · C = aᵀ·C·a for each row a
    of ``mix`` ``[..., c, 4]``: the power of that channel mix."""
    rows, cols = _ROWS.to(mix.device), _COLS.to(mix.device)
    return mix[..., rows] * mix[..., cols] * _OFF_DIAGONAL.to(mix)


class FeatureExtractor:
    """Steered-FOA features ``[..., C, n_mels, frames]`` on the input's device.

    Built from the loader's settings (sample rate in Hz, FFT size and hop in samples, mel count and scale,
    dB range, feature set). The filterbanks (and the statistics) are moved to a device once and cached
    there. With ``stats`` (per channel × mel mean and std, see :mod:`dataloading.feature_stats`) the
    output is standardised.
    """

    def __init__(
        self,
        sample_rate: int = 24000,
        n_fft: int = 512,
        hop: int = 240,
        n_mels: int = 128,
        mel_scale: MelScale = "slaney",
        top_db: float | None = 100.0,
        feature: Feature = "logmel_iv",
        stats: FeatureStats | None = None,
    ) -> None:
        if feature not in CHANNELS:
            raise ValueError(f"unknown feature {feature!r}; expected one of {sorted(CHANNELS)}")
        self.sample_rate, self.n_fft, self.hop, self.n_mels = sample_rate, n_fft, hop, n_mels
        self.mel_scale, self.top_db, self.feature = mel_scale, top_db, feature
        if stats is not None:
            stats.check(self.settings)
        self.stats = stats
        self._cache: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}
        # Each triangle covers few FFT bins, so the product is done per block of bands over just the
        # bins those bands touch: (first band, end band, first bin, end bin), fixed once per extractor.
        fb = mel_filterbank(sample_rate, n_fft, n_mels, scale=mel_scale, dtype=torch.float64)
        self._filterbank = fb.T.contiguous()
        # Band means (rows summing to 1) for the intensity vector: a mean of I/E stays in its range.
        self._band_mean = self._filterbank / self._filterbank.sum(1, keepdim=True).clamp_min(1e-12)
        support = self._filterbank > 0
        self._blocks = []
        for start in range(0, n_mels, _MEL_BLOCK):
            bins = support[start : start + _MEL_BLOCK].any(0).nonzero().flatten()
            lo, hi = (int(bins.min()), int(bins.max()) + 1) if len(bins) else (0, 1)
            self._blocks.append((start, min(start + _MEL_BLOCK, n_mels), lo, hi))

    @classmethod
    def from_config(cls, cfg: object, stats: FeatureStats | None = None) -> FeatureExtractor:
        """Build from :class:`FeatureSettings`, a :class:`dataloading.config.DataConfig` or a mapping
        of the settings (see :meth:`FeatureSettings.of`)."""
        return cls(**asdict(FeatureSettings.of(cfg)), stats=stats)

    @property
    def channels(self) -> int:
        """Number of feature channels C."""
        return CHANNELS[self.feature]

    def frames(self, n_samples: int) -> int:
        """Number of STFT frames T for ``n_samples`` samples."""
        return n_samples // self.hop + 1

    @property
    def settings(self) -> dict[str, Any]:
        """What the features' values depend on (recorded with their statistics)."""
        return {**{name: getattr(self, name) for name in _SETTINGS}, "version": FEATURE_VERSION}

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

    def unnormalised(self, feature: Feature | None = None) -> FeatureExtractor:
        """A copy without statistics, optionally of another feature set: to compute statistics with
        (:func:`dataloading.feature_stats.compute_stats`), or a classical baseline's raw features."""
        settings = {name: getattr(self, name) for name in _SETTINGS}
        return FeatureExtractor(**{**settings, "feature": feature or self.feature})

    def normalise(self, features: Tensor) -> Tensor:
        """Standardise features ``[..., C, n_mels, T]`` with the statistics, in place (unchanged without)."""
        if self.stats is None:
            return features
        stats = self.stats
        mean = self._cached("mean", features.device, features.dtype, lambda: stats.tensors()[0][..., None])
        std = self._cached("std", features.device, features.dtype, lambda: stats.tensors()[1][..., None])
        return features.sub_(mean).div_(std)

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
        spec = stft(foa, self.n_fft, self.hop)
        out = self._stereo(spec, matrix) if self.feature == "stereo" else self._quadratic(spec, matrix)
        return self.normalise(out)

    def _mel(self, spectrum: Tensor, which: str = "filterbank") -> Tensor:
        """Mel pooling ``[..., freq, T]`` -> ``[..., n_mels, T]``: exactly fb @ x, per block of bands over
        just the bins those bands touch. ``which`` is ``filterbank`` (sums, for power) or ``band_mean``
        (rows normalised to sum to 1)."""
        source = self._filterbank if which == "filterbank" else self._band_mean
        fb = self._cached(which, spectrum.device, spectrum.dtype, lambda: source)
        out = spectrum.new_empty((*spectrum.shape[:-2], self.n_mels, spectrum.shape[-1]))
        for m0, m1, lo, hi in self._blocks:
            out[..., m0:m1, :] = fb[m0:m1, lo:hi] @ spectrum[..., lo:hi, :]
        return out

    def _quadratic(self, spec: Tensor, matrix: Tensor | None) -> Tensor:
        """Features from the mel-pooled covariance (see the module docstring), ``[..., C, n_mels, T]``.

        Each viewpoint's channels are written straight into one output tensor by matrix products over
        the 10 covariance entries (and the 3 intensity-vector components): with K viewpoints sharing a
        clip the viewpoint tensors are the largest ones here, and a concatenation or a layout change
        would copy them once more.
        """
        cov = covariance(spec)  # [..., 10, freq, T]
        cov_mel = self._mel(cov)  # [..., 10, n_mels, T]
        decoder = self._cached("decoder", cov.device, cov.dtype, lambda: _DECODERS[self.feature])
        mix = decoder if matrix is None else decoder @ matrix  # [..., c, 4]: rows of the steered decoder
        decoded = len(decoder)
        out = _rows_into(quadratic_weights(mix), cov_mel, self.channels, 0)
        _to_db_(out[..., :decoded, :, :], self.top_db, 3)
        if self.feature == "logmel_iv":
            i_yzx = cov[..., _INTENSITY, :, :]  # entries (W, Y), (W, Z), (W, X): a slice, no copy
            energy = cov[..., _POWERS[0], :, :] + sum(cov[..., p, :, :] for p in _POWERS[1:]) / 3.0 + _EPS
            iv = self._mel(i_yzx / energy.unsqueeze(-3), "band_mean")  # [..., 3, n_mels, T]
            # The intensity vector rotates with the field (E does not), so its band means rotate too.
            rotation = (
                torch.eye(3, dtype=iv.dtype, device=iv.device) if matrix is None else matrix[..., 1:, 1:]
            )
            _rows_into(rotation, iv, 0, decoded, out)
        return out

    def _stereo(self, spec: Tensor, matrix: Tensor | None) -> Tensor:
        """Log-mels of L = W + Y, R = W − Y of the steered field and their GCC-PHAT: ``[..., 3, M, T]``."""
        spec = torch.view_as_real(spec)  # [..., 4, freq, T, 2]: every step below a real op
        decoder = self._cached("decoder", spec.device, spec.dtype, lambda: _DECODERS["stereo"])
        mixed = _mix(decoder if matrix is None else decoder @ matrix, spec)  # decode after steering
        real, imag = mixed.unbind(-1)
        logmel = _to_db_(self._mel(real.square().addcmul_(imag, imag)), self.top_db, 3)
        (left_re, left_im), (right_re, right_im) = (mixed[..., c, :, :, :].unbind(-1) for c in (0, 1))
        cross = torch.complex(
            left_re * right_re + left_im * right_im, left_im * right_re - left_re * right_im
        )
        return torch.cat((logmel, gcc_phat(cross, self.n_mels).unsqueeze(-3)), -3)


def _rows_into(matrix: Tensor, x: Tensor, channels: int, first: int, out: Tensor | None = None) -> Tensor:
    """``matrix [..., r, d]`` times ``x [..., d, M, T]`` written into channels ``first … first + r`` of
    ``out [..., channels, M, T]`` (a new tensor when None).

    An einsum, not a batched matmul over the stacked viewpoints: with the inner dimension this short
    (d = 10 or 3) the batched product measured ~2× slower, and one writing straight into the output's
    channel slice (``out=``) fell onto a path ~40× slower with two threads.
    """
    lead = torch.broadcast_shapes(matrix.shape[:-2], x.shape[:-3])
    if out is None:
        out = x.new_empty((*lead, channels, *x.shape[-2:]))
    out[..., first : first + matrix.shape[-2], :, :] = torch.einsum("...rd,...dmt->...rmt", matrix, x)
    return out


def _mix(matrix: Tensor, x: Tensor) -> Tensor:
    """Mix channels: ``matrix [..., c, d]`` times ``x [..., d, a, b, e]`` -> ``[..., c, a, b, e]``.

    When ``x`` is one clip shared by K viewpoints (``[..., 1, d, ...]`` against matrices
    ``[..., K, c, d]``) the K matrices are stacked into one, because a broadcast matmul would first copy
    the clip's spectrum K times.
    """
    flat = x.flatten(-3)  # [..., d, a·b·e]
    lead = flat.shape[:-3]
    if flat.dim() >= 3 and flat.shape[-3] == 1 and matrix.dim() == flat.dim() and matrix.shape[:-3] == lead:
        out = (matrix.flatten(-3, -2) @ flat.squeeze(-3)).unflatten(-2, matrix.shape[-3:-1])
    else:
        out = matrix @ flat
    return out.unflatten(-1, x.shape[-3:])
