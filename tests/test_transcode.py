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

from cluster.cli import main as avsa
from dataloading.config import PreprocessConfig
from dataloading.features import intensity_doa
from dataloading.transcode import InputError, probe, transcode

LAYOUTS = {1: "mono", 2: "stereo", 4: "4.0"}
CFG = PreprocessConfig(clip_seconds=1.0, video_size=(128, 64), fps=16, gop=8)


def synth_videos(out: Path, videos: int, seconds: float, size: str = "256x128", fps: int = 16) -> list[Path]:
    """Synthetic 360° videos (H.264 + 4-channel AAC FOA) with ground truth, via `avsa synth`."""
    args = ["--out", str(out), "--videos", str(videos), "--seconds", str(seconds), "--size", size]
    code = avsa(["synth", *args, "--fps", str(fps), "--workers", "1", "--no-fetch"])
    assert code == 0
    return sorted(out.glob("video_*.mp4"))


def write_video(
    path: Path,
    size: tuple[int, int] = (128, 64),
    seconds: float = 2.0,
    fps: int = 16,
    channels: int | None = 4,
    rate: int = 48000,
) -> Path:
    """A small H.264 mp4 with ``channels``-channel AAC audio (None: no audio track)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout=LAYOUTS[channels]) if channels else None
        for i in range(round(seconds * fps)):
            rgb = np.full((size[1], size[0], 3), (i * 7) % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            samples = (0.1 * rng.standard_normal((channels, round(seconds * rate)))).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=LAYOUTS[channels])
            frame.sample_rate, frame.pts = rate, 0
            container.mux(audio.encode(frame))
            container.mux(audio.encode(None))
    return path


def bad_inputs(folder: Path) -> dict[str, str]:
    """Write the bad-input corpus into ``folder``; returns input URL -> regex its reason must match."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(1).bytes(20000))
    (folder / "empty.mp4").write_bytes(b"")
    good = write_video(folder / "whole.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(good[: len(good) // 2])  # the index (moov) is at the end
    (folder / "whole.mp4").unlink()
    write_video(folder / "silent.mp4", channels=None)
    write_video(folder / "mono.mp4", channels=1)
    write_video(folder / "stereo.mp4", channels=2)
    write_video(folder / "tiny.mp4", size=(32, 16))
    write_video(folder / "banner.mp4", size=(256, 64))
    write_video(folder / "short.mp4", seconds=0.5)
    return {
        str(folder / "corrupt.mp4"): "not a readable media file",
        str(folder / "empty.mp4"): r"empty file \(0 bytes\)",
        str(folder / "truncated.mp4"): "not a readable media file|does not decode",
        str(folder / "silent.mp4"): "no audio",
        str(folder / "mono.mp4"): "audio has 1 channel;",
        str(folder / "stereo.mp4"): "audio has 2 channels;",
        str(folder / "tiny.mp4"): "absurd frame size 32x16",
        str(folder / "banner.mp4"): "not 2:1",
        str(folder / "short.mp4"): r"shorter \(0\.\d+ s\) than one clip",
        str(folder / "missing.mp4"): "does not exist",
    }


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
