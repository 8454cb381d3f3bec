"""Audio features: mel filterbank vs an independent reference, dB, DOA, GCC-PHAT, steering, stats."""

from __future__ import annotations

import math
import warnings
from typing import get_args

import numpy as np
import pytest
import scipy.signal
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dataloading.config import DataConfig, Feature
from dataloading.feature_stats import FeatureStats, StatsMismatch, compute_stats
from dataloading.features import CHANNELS as CHANNEL_COUNTS
from dataloading.features import (
    DB_PER_UNIT,
    FeatureExtractor,
    FeatureSettings,
    gcc_phat,
    intensity_doa,
    power_to_db,
    stft,
)
from dataloading.foa import encode_plane_wave, steer
from dataloading.mel import hz_to_mel, mel_filterbank, mel_to_hz

SR = 24000


def _reference_filterbank(sr: int, n_fft: int, n_mels: int, htk: bool, area_norm: bool) -> np.ndarray:
    """Written from the textbook definitions, band by band with np.interp: [freq, n_mels]."""

    def to_mel(f: np.ndarray) -> np.ndarray:
        if htk:
            return 2595.0 * np.log10(1.0 + f / 700.0)
        return np.where(
            f < 1000.0, 3.0 * f / 200.0, 15.0 + 27.0 * np.log(np.maximum(f, 1e-9) / 1000.0) / np.log(6.4)
        )

    def to_hz(m: np.ndarray) -> np.ndarray:
        if htk:
            return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
        return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * 6.4 ** ((m - 15.0) / 27.0))

    edges = to_hz(np.linspace(to_mel(np.array(0.0)), to_mel(np.array(sr / 2)), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    out = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, mid, hi = edges[m : m + 3]
        out[:, m] = np.interp(freqs, [lo, mid, hi], [0.0, 1.0, 0.0], left=0.0, right=0.0)
        if area_norm:
            out[:, m] *= 2.0 / (hi - lo)
    return out


@pytest.mark.parametrize("scale", ["slaney", "htk"])
@pytest.mark.parametrize("area_norm", [True, False])
def test_mel_filterbank_matches_independent_reference(scale: str, area_norm: bool) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = mel_filterbank(SR, 512, 128, scale=scale, area_norm=area_norm, dtype=torch.float64).numpy()
    ref = _reference_filterbank(SR, 512, 128, scale == "htk", area_norm)
    np.testing.assert_allclose(ours, ref, atol=1e-10)
    # Slaney's linear low end keeps every band above the 46.9 Hz bin spacing; HTK's narrower low
    # bands fall between bins at 128 mels and are reported.
    empty = ours.sum(0) == 0
    assert empty.any() == (scale == "htk") == bool(caught)


@pytest.mark.parametrize("scale", ["slaney", "htk"])
def test_mel_filterbank_matches_torchaudio_when_importable(scale: str) -> None:
    functional = pytest.importorskip("torchaudio.functional")  # a CUDA-only build here: skipped
    ref = functional.melscale_fbanks(257, 0.0, SR / 2, 128, SR, norm="slaney", mel_scale=scale)
    ours = mel_filterbank(SR, 512, 128, scale=scale)  # type: ignore[arg-type]
    torch.testing.assert_close(ours, ref.to(ours.dtype), atol=1e-6, rtol=1e-4)


def test_mel_filterbank_matches_librosa_when_importable() -> None:
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=SR, n_fft=512, n_mels=128)  # Slaney scale and area norm by default
    np.testing.assert_allclose(mel_filterbank(SR, 512, 128).numpy().T, ref, atol=1e-6, rtol=1e-4)


def test_mel_scales_known_points_and_inverse() -> None:
    hz = torch.tensor([0.0, 500.0, 1000.0, 4000.0, 11000.0], dtype=torch.float64)
    torch.testing.assert_close(hz_to_mel(torch.tensor([1000.0]), "slaney"), torch.tensor([15.0]))
    torch.testing.assert_close(
        hz_to_mel(torch.tensor([700.0]), "htk"), torch.tensor([2595.0 * math.log10(2)])
    )
    for scale in ("slaney", "htk"):
        torch.testing.assert_close(mel_to_hz(hz_to_mel(hz, scale), scale), hz)


def test_stft_matches_scipy() -> None:
    x = np.random.default_rng(0).standard_normal(4800)
    ours = stft(torch.from_numpy(x), 512, 240).numpy()
    window = scipy.signal.get_window("hann", 512)
    _, _, ref = scipy.signal.stft(
        np.pad(x, 256, mode="reflect"), nperseg=512, noverlap=272, window=window, boundary=None, padded=False
    )
    np.testing.assert_allclose(ours, ref * window.sum(), atol=1e-9)


def test_power_to_db_floor_and_top_db() -> None:
    power = torch.tensor([[[[100.0, 1.0, 1e-6, 0.0]]]])
    torch.testing.assert_close(power_to_db(power, None), torch.tensor([[[[20.0, 0.0, -60.0, -100.0]]]]))
    torch.testing.assert_close(power_to_db(power, 40.0), torch.tensor([[[[20.0, 0.0, -20.0, -20.0]]]]))
    # The clip level is per item over the last 3 dims: a quiet item keeps its own range.
    two = torch.stack((power, power * 1e-6))
    assert power_to_db(two, 40.0)[1].max() == pytest.approx(-40.0)


@settings(max_examples=25, deadline=None)
@given(st.floats(-math.pi, math.pi), st.floats(-1.4, 1.4), st.integers(0, 2**31 - 1))
def test_intensity_doa_of_noise_source_within_2_degrees(az: float, el: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    foa = encode_plane_wave(torch.randn(SR // 2, generator=gen, dtype=torch.float64), az, el)
    foa = foa + 0.05 * torch.randn(4, SR // 2, generator=gen, dtype=torch.float64)  # sensor noise
    est_az, est_el = intensity_doa(foa)
    d_true = torch.tensor([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
    d_est = torch.stack(
        (torch.cos(est_az) * torch.cos(est_el), torch.sin(est_az) * torch.cos(est_el), torch.sin(est_el))
    ).float()
    assert math.degrees(math.acos(float(torch.dot(d_true, d_est).clamp(-1, 1)))) < 2.0


@pytest.mark.parametrize("delay", [-7, 0, 3, 20])
def test_gcc_phat_peaks_at_known_delay(delay: int) -> None:
    x = torch.randn(SR // 4 + 64, generator=torch.Generator().manual_seed(1))
    a = x[32 : 32 + SR // 4]
    b = x[32 - delay : 32 - delay + SR // 4]  # b(t) = a(t − delay): sound reaches b `delay` samples later
    cc = gcc_phat(stft(a) * stft(b).conj(), 64)
    assert cc.shape == (64, SR // 4 // 240 + 1)
    lag = int(cc[:, 3:-3].mean(-1).argmax()) - 32  # interior frames avoid the reflect-padded edges
    assert lag == -delay


@pytest.mark.parametrize("feature", sorted(get_args(Feature)))
def test_spectral_steering_equals_time_domain_steering(feature: str) -> None:
    """Steering the covariance (one STFT per clip) is exact: in float64 it matches steering the waveforms
    first to rounding, and in float32 to a hundredth of a feature unit (0.2 dB) near a cardioid's null."""
    gen = torch.Generator().manual_seed(3)
    source = torch.randn(2, 1, 4800, generator=gen, dtype=torch.float64)
    foa = encode_plane_wave(source, torch.tensor([[0.5], [-2.0]], dtype=torch.float64), 0.3)
    foa = foa + 0.3 * torch.randn(2, 1, 4, 4800, generator=gen, dtype=torch.float64)
    az = torch.tensor([[0.5, 2.0, -1.0], [-2.0, 0.0, 3.0]], dtype=torch.float64)
    el = torch.tensor([[0.3, -0.4, 0.0], [0.3, 0.5, -0.2]], dtype=torch.float64)
    extractor = FeatureExtractor(feature=feature)
    shared = extractor(foa, az, el)
    direct = extractor(steer(foa, az, el))  # [2, 3, 4, N] steered in the time domain first
    assert shared.shape == (2, 3, FeatureSettings(feature=feature).channels, 128, 4800 // 240 + 1)
    torch.testing.assert_close(shared, direct, atol=1e-9, rtol=1e-9)
    single = extractor(foa.float(), az.float(), el.float())
    torch.testing.assert_close(single, direct.float(), atol=1e-2, rtol=0)


def test_logmel_iv_channels_against_direct_formula() -> None:
    """Channel by channel against the DCASE formulas written out with a dense filterbank."""
    gen = torch.Generator().manual_seed(4)
    foa = encode_plane_wave(torch.randn(4800, generator=gen, dtype=torch.float64), 1.0, 0.2)
    foa = foa + 0.2 * torch.randn(4, 4800, generator=gen, dtype=torch.float64)
    out = FeatureExtractor(feature="logmel_iv", top_db=80.0)(foa)
    spec = stft(foa)
    fb = mel_filterbank(SR, 512, 128, dtype=torch.float64).T
    db = 10 * torch.log10((fb @ spec.abs().square()).clamp_min(1e-10))
    db = torch.maximum(db, db.max() - 80.0)
    energy = spec[0].abs() ** 2 + (spec[1:].abs() ** 2).sum(0) / 3 + 1e-8
    band_mean = fb / fb.sum(1, keepdim=True)  # a weighted mean over each band: I/E keeps its range
    iv = band_mean @ ((spec[:1].conj() * spec[1:]).real / energy)
    torch.testing.assert_close(out, torch.cat((db / DB_PER_UNIT, iv)), atol=1e-6, rtol=1e-6)
    # Every channel is O(1) before any statistics: log-mels in units of 20 dB, |I/E| ≤ √3/2.
    assert out[:4].abs().max() < 6 and out[4:].abs().max() <= math.sqrt(3) / 2


def test_mono_and_stereo_directional_cues() -> None:
    x = torch.randn(4800, generator=torch.Generator().manual_seed(5))
    left_source = encode_plane_wave(x, math.pi / 2, 0.0)
    stereo = FeatureExtractor(feature="stereo")(left_source)
    forty_db = 40 / DB_PER_UNIT
    assert stereo[0].mean() > stereo[1].mean() + forty_db  # the right cardioid nulls a source hard left
    mono = FeatureExtractor(feature="mono")
    front = mono(encode_plane_wave(x, 0.0, 0.0))
    behind = mono(encode_plane_wave(x, math.pi, 0.0))
    assert front.mean() > behind.mean() + forty_db


@pytest.mark.parametrize(
    ("az", "el", "loud", "quiet"),
    [(0.0, 0.0, 0, 1), (math.pi, 0.0, 1, 0), (math.pi / 2, 0.0, 2, 3), (0.0, -math.pi / 2, 5, 4)],
)
def test_cardioids_face_their_axes(az: float, el: float, loud: int, quiet: int) -> None:
    """W ± X, W ± Y, W ± Z: the cardioid facing a plane wave hears it, the one facing away nulls it."""
    x = torch.randn(4800, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    cardioids = FeatureExtractor(feature="cardioids", top_db=None)(encode_plane_wave(x, az, el))
    assert cardioids[loud].mean() > cardioids[quiet].mean() + 60 / DB_PER_UNIT


@settings(max_examples=30, deadline=None)
@given(st.floats(-math.pi, math.pi), st.floats(-1.2, 1.2), st.floats(-math.pi, math.pi), st.floats(-0.5, 0.5))
def test_antipodal_twin_views_equal_for_logmel_only(
    az: float, el: float, src_az: float, src_el: float
) -> None:
    """Views (φ, ν) and (φ + π, −ν) steer X and Y to their negatives and leave W and Z: magnitudes cannot
    tell them apart, the intensity vector and the cardioids can."""
    gen = torch.Generator().manual_seed(8)
    foa = encode_plane_wave(torch.randn(4800, generator=gen, dtype=torch.float64), src_az, src_el)
    foa = foa + 0.1 * torch.randn(4, 4800, generator=gen, dtype=torch.float64)
    twin = (az + math.pi, -el)
    for feature in ("logmel", "logmel_iv", "cardioids"):
        extractor = FeatureExtractor(feature=feature, n_mels=32)
        gap = (extractor(foa, az, el) - extractor(foa, *twin)).abs().max()
        if feature == "logmel":
            assert gap < 1e-9
        else:
            assert gap > 0.1, feature


def test_from_config_filterbank_cached_and_stats_roundtrip(tmp_path) -> None:
    cfg = DataConfig(feature="logmel_iv", n_mels=32)
    extractor = FeatureExtractor.from_config(cfg)
    fb = extractor.filterbank(torch.device("cpu"), torch.float32)
    assert extractor.filterbank(torch.device("cpu"), torch.float32) is fb
    assert extractor.channels == 7 and extractor.frames(24000) == 101

    gen = torch.Generator().manual_seed(6)
    batches = [
        (torch.randn(2, 1, 4, 2400, generator=gen), torch.rand(2, 3, generator=gen), torch.zeros(2, 3))
    ]
    stats = compute_stats(extractor, batches * 2, extractor.settings)
    feats = extractor(*batches[0])
    torch.testing.assert_close(stats.tensors()[0], feats.mean((0, 1, 4)), atol=1e-4, rtol=1e-4)

    url = str(tmp_path / "stats" / "features.json")
    stats.save(url)
    loaded = FeatureStats.load(url, expect_settings=extractor.settings)
    assert loaded.count == stats.count == 2 * 2 * 3 * 11
    normalised = FeatureExtractor.from_config(cfg, stats=loaded)(*batches[0])
    torch.testing.assert_close(normalised.mean((0, 1, 4)), torch.zeros(7, 32), atol=1e-3, rtol=0)
    torch.testing.assert_close(normalised.std((0, 1, 4), correction=0), torch.ones(7, 32), atol=1e-3, rtol=0)
    # Other settings are refused, naming both values of what differs.
    with pytest.raises(StatsMismatch, match=r"n_mels=32.*n_mels=64"):
        FeatureStats.load(url, expect_settings={**extractor.settings, "n_mels": 64})
    with pytest.raises(StatsMismatch, match=r"feature='logmel_iv'.*feature='cardioids'"):
        FeatureExtractor.from_config(DataConfig(feature="cardioids", n_mels=32), stats=loaded)


def test_unknown_feature_rejected() -> None:
    with pytest.raises(ValueError):
        FeatureExtractor(feature="binaural")  # type: ignore[arg-type]


def test_every_feature_named_in_the_config_has_a_channel_count_and_nothing_else_does() -> None:
    assert set(CHANNEL_COUNTS) == set(get_args(Feature))
    settings = FeatureSettings.of(DataConfig(feature="cardioids", n_mels=64))
    assert (settings.channels, settings.n_mels) == (6, 64)
    assert FeatureExtractor.from_config(settings).channels == settings.channels
