"""Probe a raw 360° video with FOA audio, cut it into clips and transcode them to the sample format.

Video: equirectangular, ``fps`` constant frame rate (sample-and-hold of the source frames), scaled to
``video_size``, VP9 (or VP8/MJPEG) with a keyframe every ``gop`` frames, in mp4 — DALI decodes that on
CPU and GPU. Audio: 4-channel FOA resampled to ``audio_rate`` Hz, converted to AmbiX if the input is
FuMa, FLAC of 16 bits, or 24 where the input is lossless with more than 16 (see :func:`flac_bits`).
Inputs that cannot become samples raise :class:`InputError` with a reason a person can act on.
All times are seconds; rates Hz; sizes pixels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from fractions import Fraction
from typing import IO, Any

import av
import numpy as np
import soundfile as sf
import torch

from dataloading.config import PreprocessConfig, StorageConfig
from dataloading.dcase import Event
from dataloading.foa import fuma_to_ambix
from dataloading.schema import AUDIO_SIDECAR_SUFFIXES, DatasetOrigin
from dataloading.storage import filesystem

ENCODERS = {"vp9": "libvpx-vp9", "vp8": "libvpx", "mjpeg": "mjpeg"}
# Equirect inputs must be 2:1 (within this tolerance) and within these pixel bounds.
ASPECT_TOLERANCE = 0.05
MIN_SIZE = (64, 32)
MAX_SIZE = (16384, 8192)
FOA_CHANNELS = 4
# One decoder and one encoder thread: actors scale across cores, and frame threads only added CPU time.
CODEC_THREADS = 1
VPX_CRF = 32  # constant quality of the clips' VP9/VP8 video (libvpx's 0-63, lower is better)
_EPS = 1e-4  # seconds: slack when comparing frame times


class InputError(Exception):
    """An input that cannot become training samples; ``str(exc)`` is the reason for the manifest."""


@dataclass
class Probe:
    """What a raw input holds. ``audio_url`` is the input itself, its sidecar or the audio file its
    dataset layout pairs with it; ``labels`` (the recording's label events, 100-ms frames) and
    ``dataset`` (the sample JSON's ``dataset`` block) are set for inputs of a layout that has them."""

    url: str
    audio_url: str
    duration: float  # seconds covered by both video and audio
    width: int
    height: int
    fps: float
    audio_rate: int
    input_format: str  # "ambix" or "fuma"
    audio_bits: int  # bits per sample of the clips' FLAC (:func:`flac_bits`)
    labels: list[Event] | None = None
    dataset: DatasetOrigin | None = None

    def clip_starts(self, clip_seconds: float) -> list[float]:
        """Start times of the whole clips that fit in the input (a partial tail is dropped)."""
        count = math.floor(self.duration / clip_seconds + 1e-6)
        return [round(i * clip_seconds, 6) for i in range(count)]


@dataclass
class TranscodedClip:
    """One transcoded clip: ``mp4`` and ``flac`` bytes, the AmbiX audio ``[4, N]`` float32 at the
    output rate, and RGB frames ``{output frame index: uint8 [H, W, 3]}`` kept for detection."""

    index: int
    start: float
    mp4: bytes
    flac: bytes
    audio: np.ndarray
    frames: dict[int, np.ndarray] = field(default_factory=dict)


def _open(url: str, storage: StorageConfig | None, stack: ExitStack) -> IO[bytes]:
    """Open ``url`` for reading, as a seekable file object; failures become InputError."""
    try:
        fs, path = filesystem(url, storage)
        if not fs.exists(path):
            raise InputError(f"cannot read input: {url} does not exist")
        if fs.size(path) == 0:
            raise InputError("empty file (0 bytes)")
        return stack.enter_context(fs.open(path, "rb", block_size=4 << 20))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read input: {type(exc).__name__}: {exc}") from exc


def _container(fh: IO[bytes], stack: ExitStack) -> av.container.InputContainer:
    try:
        return stack.enter_context(av.open(fh, "r"))
    except Exception as exc:
        raise InputError(f"not a readable media file: {exc}") from exc


def _sidecar(url: str, storage: StorageConfig | None) -> str | None:
    """The first existing ``<stem>.flac``/``<stem>.wav`` beside ``url``, or None."""
    stem = url.rsplit(".", 1)[0]
    for suffix in AUDIO_SIDECAR_SUFFIXES:
        fs, path = filesystem(stem + suffix, storage)
        if fs.exists(path):
            return stem + suffix
    return None


def _stream_duration(stream: Any, container: av.container.InputContainer) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _detect_format(container: av.container.InputContainer, stream: Any, requested: str) -> str:
    """``requested`` unless "auto": then FuMa if the metadata says so (e.g. a ``fuma`` tag), else AmbiX."""
    if requested != "auto":
        return requested
    tags = {**container.metadata, **stream.metadata}
    text = " ".join(f"{k}={v}" for k, v in tags.items()).lower()
    return "fuma" if "fuma" in text or "furse" in text else "ambix"


def flac_bits(stream: Any) -> int:
    """Bits per FLAC sample for audio ``stream``: 24 where it is lossless (PCM, FLAC, ALAC) with more than
    16 bits per sample, else 16 — what 16-bit PCM and lossy codecs (AAC, Opus: the usual 360° video
    audio) carry; more bits would only store their quantisation noise."""
    context = stream.codec_context
    return 24 if context.codec.lossless and context.format.bits > 16 else 16


def _audio_source(
    url: str,
    container: av.container.InputContainer,
    audio_url: str | None,
    storage: StorageConfig | None,
    stack: ExitStack,
) -> tuple[str, av.container.InputContainer, Any]:
    """(URL, container, stream) of the audio of video ``url``: ``audio_url`` where a dataset layout names
    the recording's audio file, else the video's own audio track, else a sidecar beside it."""
    if audio_url is None and container.streams.audio:
        return url, container, container.streams.audio[0]
    if audio_url is None:
        audio_url = _sidecar(url, storage)
        if audio_url is None:
            raise InputError(
                f"no audio: no audio stream and no sidecar {'/'.join(AUDIO_SIDECAR_SUFFIXES)} file"
            )
    audio_container = _container(_open(audio_url, storage, stack), stack)
    if not audio_container.streams.audio:
        raise InputError(f"audio file {audio_url} has no audio stream")
    return audio_url, audio_container, audio_container.streams.audio[0]


def probe(
    url: str, cfg: PreprocessConfig, storage: StorageConfig | None = None, audio_url: str | None = None
) -> Probe:
    """Inspect video ``url`` and its audio; raise InputError if they cannot be used.

    The audio is ``audio_url`` when given (a dataset layout pairs the files: STARSS23 ``foa_dev/*.wav``,
    YT-360 ``audio/*.m4a``), else the video's own audio track, else a sidecar ``.flac``/``.wav`` beside it.
    """
    with ExitStack() as stack:
        container = _container(_open(url, storage, stack), stack)
        if not container.streams.video:
            raise InputError("no video stream")
        video = container.streams.video[0]
        width, height = video.codec_context.width, video.codec_context.height
        if not (MIN_SIZE[0] <= width <= MAX_SIZE[0] and MIN_SIZE[1] <= height <= MAX_SIZE[1]):
            raise InputError(
                f"absurd frame size {width}x{height}: equirect needs {MIN_SIZE[0]}x{MIN_SIZE[1]} "
                f"to {MAX_SIZE[0]}x{MAX_SIZE[1]} pixels"
            )
        if abs(width / height - 2.0) > 2.0 * ASPECT_TOLERANCE:
            raise InputError(f"frame size {width}x{height} is not 2:1 equirectangular")
        fps = float(video.average_rate or video.guessed_rate or 0)
        if fps <= 0:
            raise InputError("video has no frame rate")
        video_seconds = _stream_duration(video, container)
        try:  # a header can look fine over garbage: decode one frame to be sure
            next(container.decode(video))
        except (StopIteration, av.FFmpegError) as exc:
            raise InputError(f"video does not decode: {exc or 'no frames'}") from exc

        audio_url, audio_container, audio_stream = _audio_source(url, container, audio_url, storage, stack)
        channels = audio_stream.codec_context.channels
        if channels != FOA_CHANNELS:
            where = f"{audio_url}: " if audio_url != url else ""  # a separate audio file is named
            raise InputError(
                f"{where}audio has {channels} channel{'s' if channels != 1 else ''}; "
                f"first-order ambisonics needs {FOA_CHANNELS}"
            )
        duration = min(video_seconds, _stream_duration(audio_stream, audio_container))
        if duration <= 0:
            raise InputError("zero duration")
        if duration + 1e-6 < cfg.clip_seconds:
            raise InputError(f"shorter ({duration:.2f} s) than one clip ({cfg.clip_seconds:g} s)")
        return Probe(
            url=url,
            audio_url=audio_url,
            duration=duration,
            width=width,
            height=height,
            fps=fps,
            audio_rate=audio_stream.codec_context.sample_rate,
            input_format=_detect_format(audio_container, audio_stream, cfg.input_format),
            audio_bits=flac_bits(audio_stream),
        )


def audio_frame_array(frame: av.AudioFrame) -> np.ndarray:
    """Samples of a decoded audio frame as float32 ``[channels, n]`` in [-1, 1]."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        data = data.reshape(-1, channels).T
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / np.float32(np.iinfo(data.dtype).max + 1)
    return data.astype(np.float32, copy=False)


def _non_finite(frame: av.AudioFrame) -> int:
    """How many samples of a decoded frame are NaN or infinite (only float formats can hold them)."""
    if not frame.format.name.startswith(("flt", "dbl")):
        return 0
    return int(np.count_nonzero(~np.isfinite(frame.to_ndarray())))


class _AudioStream:
    """Decoded audio of one stream, resampled by FFmpeg to ``rate`` Hz, as a sample timeline read forward
    clip by clip. The resampler keeps the input's channel layout, so it never mixes channels.

    Raises InputError naming ``url`` if the stream holds NaN or infinite samples: FFmpeg would smear
    them over the resampled neighbours and the FLAC encoder refuses them.
    """

    def __init__(self, container: av.container.InputContainer, start: float, rate: int, url: str) -> None:
        self.stream = container.streams.audio[0]
        self.rate, self.url = rate, url
        container.seek(int(max(0.0, start) / self.stream.time_base), stream=self.stream)
        self._frames = container.decode(self.stream)
        self._resampler: av.AudioResampler | None = None
        self._ended = False
        self._buf = np.zeros((FOA_CHANNELS, 0), np.float32)
        self._chunks: list[np.ndarray] = []  # pulled after _buf, joined once per clip (not per frame)
        self._pulled = 0  # samples in _buf and _chunks together
        self._first: int | None = None  # timeline sample index of self._buf[:, 0]

    def _pull(self) -> bool:
        """Append the next resampled chunk to the buffer; False once the stream is exhausted."""
        if self._ended:
            return False
        frame = next(self._frames, None)
        if frame is not None and self._resampler is None:
            self._first = round((frame.time or 0.0) * self.rate)
            self._resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=self.rate)
        if self._resampler is None:  # no audio at all
            self._ended = True
            return False
        if frame is not None and (bad := _non_finite(frame)):
            # Count the rest too (audio only, on this error path): the reason says how much is broken.
            bad += sum(_non_finite(f) for f in self._frames)
            raise InputError(
                f"{self.url}: {bad} non-finite audio samples (NaN or Inf), the first "
                f"in the frame at {frame.time or 0.0:.2f} s; "
                "every sample must be a finite number: re-export the audio"
            )
        chunks = self._resampler.resample(frame)  # None at the end flushes the resampler's tail
        self._ended = frame is None
        for chunk in chunks:
            self._chunks.append(audio_frame_array(chunk))
            self._pulled += self._chunks[-1].shape[1]
        return True

    def take(self, start: float, seconds: float) -> np.ndarray:
        """Samples ``[4, round(seconds·rate)]`` from ``start``, zero-padded where the stream has none."""
        s0, n = round(start * self.rate), round(seconds * self.rate)
        while (self._first is None or self._first + self._pulled < s0 + n) and self._pull():
            pass
        if self._chunks:
            self._buf, self._chunks = np.concatenate([self._buf, *self._chunks], axis=1), []
        first = self._first if self._first is not None else s0
        out = np.zeros((FOA_CHANNELS, n), np.float32)
        lo, hi = max(s0, first), min(s0 + n, first + self._buf.shape[1])
        if hi > lo:
            out[:, lo - s0 : hi - s0] = self._buf[:, lo - first : hi - first]
        keep = max(0, s0 + n - first)  # the next clip starts at or after this clip's end
        self._buf, self._first = self._buf[:, keep:], first + keep
        self._pulled = self._buf.shape[1]
        return out


def to_ambix(audio: np.ndarray, input_format: str) -> np.ndarray:
    """FOA ``[4, N]`` in ``input_format`` ("ambix" or "fuma") as AmbiX (ACN/SN3D)."""
    if input_format == "fuma":
        return fuma_to_ambix(torch.from_numpy(audio)).numpy()
    return audio


def flac_bytes(audio: np.ndarray, rate: int, bits: int = 24) -> bytes:
    """``[C, N]`` float audio at ``rate`` Hz as FLAC of ``bits`` (16 or 24) bits per sample."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio.T, -1.0, 1.0), rate, format="FLAC", subtype=f"PCM_{bits}")
    return buf.getvalue()


def encoder_options(cfg: PreprocessConfig, crf: int = VPX_CRF) -> dict[str, str]:
    """FFmpeg options of the video encoder: keyframe every ``cfg.gop`` frames, one thread; for VP9/VP8
    constant quality ``crf`` (libvpx's 0-63, lower is better)."""
    options = {"threads": str(CODEC_THREADS), "g": str(cfg.gop), "keyint_min": str(cfg.gop)}
    if cfg.codec in ("vp9", "vp8"):
        # realtime + cpu-used 8 is libvpx's fastest preset; crf keeps quality constant per clip
        options |= {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "crf": str(crf), "b": "0"}
    return options


class Mp4Writer:
    """Writes one clip's video: encodes frames with ``cfg.codec`` into an in-memory mp4 at a constant
    ``cfg.fps``, keyframe every ``cfg.gop`` frames, VP9/VP8 at constant quality ``crf``."""

    def __init__(self, cfg: PreprocessConfig, crf: int = VPX_CRF) -> None:
        self._buf = io.BytesIO()
        self._container = av.open(self._buf, "w", format="mp4")
        self._stream = self._container.add_stream(ENCODERS[cfg.codec], rate=cfg.fps)
        self._stream.width, self._stream.height = cfg.video_size
        self._stream.pix_fmt = "yuvj420p" if cfg.codec == "mjpeg" else "yuv420p"
        self._stream.gop_size = cfg.gop
        self._stream.codec_context.options = encoder_options(cfg, crf)
        self._count = 0

    def add(self, frame: av.VideoFrame) -> None:
        """Append a frame at the output size (the encoder converts another pixel format)."""
        frame.pts = self._count
        self._count += 1
        self._container.mux(self._stream.encode(frame))

    def finish(self) -> bytes:
        """Flush the encoder and close the mp4; returns its bytes."""
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._buf.getvalue()


def _scaled(frame: av.VideoFrame, cfg: PreprocessConfig) -> av.VideoFrame:
    width, height = cfg.video_size
    out = frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")
    out.time_base = Fraction(1, cfg.fps)
    return out


def transcode(
    probe_: Probe,
    clip_indices: Sequence[int],
    cfg: PreprocessConfig,
    keep_frames: Sequence[int] = (),
    storage: StorageConfig | None = None,
) -> Iterator[TranscodedClip]:
    """Transcode clips ``clip_indices`` (ascending) of an input in one forward pass over its streams.

    Video output frame i of a clip shows the latest source frame at or before ``start + i/fps``.
    ``keep_frames`` are output frame indices whose RGB pictures are returned for detection.
    """
    if not clip_indices:
        return
    n_frames = round(cfg.clip_seconds * cfg.fps)
    starts = [i * cfg.clip_seconds for i in clip_indices]
    with ExitStack() as stack:
        container = _container(_open(probe_.url, storage, stack), stack)
        video = container.streams.video[0]
        video.codec_context.thread_count = CODEC_THREADS
        audio_container = _container(_open(probe_.audio_url, storage, stack), stack)
        audio = _AudioStream(audio_container, starts[0], cfg.audio_rate, probe_.audio_url)
        container.seek(int(starts[0] / video.time_base), stream=video)

        def frames() -> Iterator[tuple[float, av.VideoFrame]]:
            for frame in container.decode(video):
                yield float(frame.time if frame.time is not None else 0.0), frame

        source = frames()
        latest: av.VideoFrame | None = None  # the latest source frame at or before the output time
        held: av.VideoFrame | None = None  # its scaled copy, made only when a frame is output: sources
        upcoming = next(source, None)  # faster than the output rate skip the scaling of the rest
        for clip_index, start in zip(clip_indices, starts, strict=True):
            writer = Mp4Writer(cfg)
            kept: dict[int, np.ndarray] = {}
            for i in range(n_frames):
                t = start + i / cfg.fps
                while upcoming is not None and (latest is None or upcoming[0] <= t + _EPS):
                    latest, held = upcoming[1], None
                    upcoming = next(source, None)
                if latest is None:
                    raise InputError(f"no video frames at {t:.2f} s")
                if held is None:
                    held = _scaled(latest, cfg)
                if i in keep_frames:
                    kept[i] = held.to_ndarray(format="rgb24")
                writer.add(held)
            mp4 = writer.finish()
            foa = to_ambix(audio.take(start, cfg.clip_seconds), probe_.input_format)
            flac = flac_bytes(foa, cfg.audio_rate, probe_.audio_bits)
            yield TranscodedClip(clip_index, start, mp4, flac, foa, kept)
