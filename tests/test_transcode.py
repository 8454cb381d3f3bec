"""Probe, cut and transcode: the training format, FuMa conversion, sidecar audio, and bad inputs.

Good inputs come from `avsa synth` (the project's demo-data generator); the bad-input corpus is written
here with small PyAV helpers, since synth only makes good videos.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from dataloading.config import PreprocessConfig
from dataloading.features import intensity_doa
from dataloading.transcode import InputError, probe, transcode
from tests.helpers import bad_inputs, synth_videos, write_video

CFG = PreprocessConfig(clip_seconds=1.0, video_size=(128, 64), fps=16, gop=8)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synth_videos(tmp_path_factory.mktemp("synth"), videos=1, seconds=2.5, fps=30)


def test_clips_are_vp9_at_constant_rate_with_short_gop_and_4ch_24k_audio(synth) -> None:
    p = probe(str(synth[0]), CFG)
    assert (p.width, p.height, p.audio_rate, p.input_format) == (256, 128, 48000, "ambix")
    assert p.clip_starts(CFG.clip_seconds) == [0.0, 1.0]  # the 0.5 s tail is not a whole clip
    clips = list(transcode(p, [0, 1], CFG, keep_frames=(4, 12)))
    assert [c.index for c in clips] == [0, 1] and [c.start for c in clips] == [0.0, 1.0]
    for clip in clips:
        with av.open(io.BytesIO(clip.mp4)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "vp9"
            assert (stream.codec_context.width, stream.codec_context.height) == CFG.video_size
            frames = list(container.decode(stream))
        assert len(frames) == 16
        assert [f.time for f in frames] == pytest.approx([i / 16 for i in range(16)])  # constant rate
        assert [i for i, f in enumerate(frames) if f.key_frame] == [0, 8]
        audio, rate = sf.read(io.BytesIO(clip.flac), always_2d=True)
        assert (rate, audio.shape) == (24000, (24000, 4))
        # AAC carries no more than 16 bits: 16-bit FLAC, within half a step of the decoded audio
        assert p.audio_bits == 16 and sf.info(io.BytesIO(clip.flac)).subtype == "PCM_16"
        assert np.abs(audio.T - clip.audio).max() <= 2**-16
        assert sorted(clip.frames) == [4, 12] and clip.frames[4].shape == (64, 128, 3)


def test_sidecar_fuma_plane_wave_comes_out_ambix_from_the_same_direction(tmp_path) -> None:
    az, el, rate = math.radians(60), math.radians(20), 48000
    signal = 0.3 * np.random.default_rng(2).standard_normal(2 * rate)
    # FuMa order W, X, Y, Z with W at -3 dB
    fuma = np.stack(
        [
            signal / math.sqrt(2),
            signal * math.cos(az) * math.cos(el),
            signal * math.sin(az) * math.cos(el),
            signal * math.sin(el),
        ]
    )
    write_video(tmp_path / "take.mp4", channels=None)
    sf.write(tmp_path / "take.wav", fuma.T, rate, subtype="FLOAT")
    p = probe(str(tmp_path / "take.mp4"), PreprocessConfig(clip_seconds=1.0, input_format="fuma"))
    assert p.audio_url == str(tmp_path / "take.wav") and p.input_format == "fuma"
    cfg = PreprocessConfig(clip_seconds=1.0, video_size=(128, 64), input_format="fuma")
    clip = next(transcode(p, [1], cfg))
    got_az, got_el = intensity_doa(torch.from_numpy(clip.audio))
    assert math.degrees(float(got_az)) == pytest.approx(60, abs=1)
    assert math.degrees(float(got_el)) == pytest.approx(20, abs=1)
    # SN3D: X = W·cosφ·cosν, so W is back at full level (FuMa's W is 3 dB down)
    w, x = clip.audio[0], clip.audio[3]
    assert np.std(x) / np.std(w) == pytest.approx(math.cos(az) * math.cos(el), rel=0.02)
    # a lossless 32-bit float sidecar keeps 24 bits
    assert p.audio_bits == 24 and sf.info(io.BytesIO(clip.flac)).subtype == "PCM_24"
    decoded, _ = sf.read(io.BytesIO(clip.flac), always_2d=True)
    assert np.abs(decoded.T - clip.audio).max() <= 2**-24


def test_every_bad_input_is_rejected_with_its_reason(tmp_path) -> None:
    for url, reason in bad_inputs(tmp_path).items():
        with pytest.raises(InputError) as info:
            probe(url, CFG)
        assert re.search(reason, str(info.value)), (url, str(info.value))


def test_non_finite_sidecar_audio_is_rejected_naming_the_file_and_the_count(tmp_path) -> None:
    """NaN and Inf samples in a float WAV: the reason names the audio file and counts them (before the
    fix, the FLAC encoder's bare AssertionError was all the manifest said)."""
    from cluster.preprocess import PreprocessWorker, plan_shards
    from dataloading.config import StorageConfig

    audio = (0.1 * np.random.default_rng(3).standard_normal((2 * 48000, 4))).astype(np.float32)
    audio[1000:1010, 2] = np.nan
    audio[50000, 0] = np.inf
    video = write_video(tmp_path / "take.mp4", channels=None)
    sf.write(tmp_path / "take.wav", audio, 48000, subtype="FLOAT")
    expected = rf"{re.escape(str(tmp_path / 'take.wav'))}: 11 non-finite audio samples \(NaN or Inf\)"
    p = probe(str(video), CFG)  # the header is fine; the samples are not
    with pytest.raises(InputError, match=expected):
        list(transcode(p, [0, 1], CFG))

    prep = PreprocessConfig(input=str(tmp_path), output=str(tmp_path / "out"), clip_seconds=1.0)
    worker = PreprocessWorker(prep, StorageConfig())
    (plan,) = plan_shards({str(video): p}, prep.clip_seconds, prep.shard_size)
    result = worker.make_shard(plan, {str(video): p}, prep.output, None)
    assert result.status == "empty" and result.written == {}
    assert re.fullmatch(f"transcode failed: InputError: {expected}.*", result.failed[str(video)])
