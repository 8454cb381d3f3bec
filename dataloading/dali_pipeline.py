"""DALI pipelines that decode samples: FOA audio windows and video windows (CPU), or video crops (GPU).

Encoded bytes arrive through ``fn.external_source``: the loader reads each sample with one ranged request
(:class:`dataloading.shards.ShardReader`), so local files and object storage take the same path, and the
loader, not DALI's reader, decides which sample comes when (exact rank split, mid-epoch resume).

- :class:`SampleDecoder` (CPU, one per loader worker): ``fn.decoders.audio`` of the 4-channel FLAC,
  resampled to the training rate and cut to the audio window; with ``video=True`` also
  ``fn.decoders.video(device="cpu")`` of the frame window (VP8/VP9/MJPEG).
- :class:`GpuCropDecoder` (main process, CUDA): ``fn.decoders.video(device="mixed")`` of the frame window,
  then ``fn.experimental.remap`` with the K gnomonic maps of :func:`dataloading.geometry.remap_maps`
  stacked along the height, so all K crops of a clip come from one remap call.

DALI's CPU video decoder, fed from memory, decodes every frame before the requested start (its seek does
not take effect), so a window late in a 10 s clip cost up to 5× one at the start. :func:`trim_window`
therefore cuts the packets of the window's GOPs out of the mp4 first (demux and mux only, no decoding,
~2 ms), and DALI decodes the same frames bit for bit from the small file.

DALI fails a whole batch when one sample is bad; :func:`_run` then decodes the samples one by one, so
only the bad ones are reported (as exceptions in place of their outputs) and the rest are kept.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import av
import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline

# A window that runs past the end of a clip repeats its last frame.
_PAD_MODE = "edge"


def _source(name: str, dtype: Any, ndim: int) -> Any:
    return fn.external_source(name=name, dtype=dtype, ndim=ndim)


def _video_window(encoded: Any, device: str, frames: int) -> Any:
    """Decode ``frames`` frames from a per-sample start frame, every ``stride``-th frame: ``[T, H, W, 3]``."""
    return fn.decoders.video(
        encoded,
        device=device,
        start_frame=_source("start_frame", types.INT32, 0),
        stride=_source("stride", types.INT32, 0),
        sequence_length=frames,
        pad_mode=_PAD_MODE,
    )


@pipeline_def(exec_dynamic=True, prefetch_queue_depth=1)
def _sample_pipeline(sample_rate: int, frames: int, video: bool) -> tuple[Any, ...]:
    flac = _source("flac", types.UINT8, 1)
    audio, _ = fn.decoders.audio(flac, downmix=False, sample_rate=float(sample_rate), dtype=types.FLOAT)
    # Window [anchor, anchor + length) in samples, zero-padded where it runs past the clip.
    window = fn.slice(
        audio,
        _source("audio_anchor", types.INT32, 1),
        _source("audio_length", types.INT32, 1),
        axes=[0],
        out_of_bounds_policy="pad",
    )
    if not video:
        return (window,)
    return window, _video_window(_source("mp4", types.UINT8, 1), "cpu", frames)


@pipeline_def(exec_dynamic=True, prefetch_queue_depth=1)
def _gpu_crop_pipeline(frames: int, pad: int) -> Any:
    decoded = _video_window(_source("mp4", types.UINT8, 1), "mixed", frames)
    # remap's border is a constant 0, so the seam is handled by wrapped columns, as in geometry.crop.
    padded = fn.cat(decoded[:, :, -pad:], decoded, decoded[:, :, :pad], axis=2)
    mapx, mapy = (
        fn.external_source(name=name, dtype=types.FLOAT, ndim=2, layout="HW") for name in ("mapx", "mapy")
    )
    return fn.experimental.remap(padded, mapx.gpu(), mapy.gpu(), pixel_origin="corner")


def trim_window(mp4: bytes, start_frame: int, frames: int, stride: int, fps: float) -> tuple[bytes, int]:
    """The packets of an mp4 from the keyframe at or before ``start_frame`` up to the window's end.

    The window is ``frames`` frames every ``stride``-th from ``start_frame`` of a constant-rate video at
    ``fps``, in a codec without frame reordering (VP8, VP9, MJPEG: the sample format), so packets come
    in presentation order. Returns the new mp4 and the window's first frame index in it. Raises
    ``av.FFmpegError`` for a stream that cannot be demuxed.
    """
    out = io.BytesIO()
    with av.open(io.BytesIO(mp4)) as src, av.open(out, "w", format="mp4") as dst:
        stream = src.streams.video[0]
        origin = stream.start_time or 0
        src.seek(origin + round(start_frame / fps / stream.time_base), stream=stream, backward=True)
        copy = dst.add_stream_from_template(stream)
        first: int | None = None
        for packet in src.demux(stream):
            if packet.pts is None:  # the demuxer's final empty packet
                continue
            index = round((packet.pts - origin) * stream.time_base * fps)
            if index >= start_frame + frames * stride:
                break
            if first is None:
                first, pts0, dts0 = index, packet.pts, packet.dts
            packet.pts, packet.dts = packet.pts - pts0, packet.dts - dts0
            packet.stream = copy
            dst.mux(packet)
    if first is None:
        raise av.InvalidDataError(0, "no video packets in the window")
    return out.getvalue(), start_frame - first


def _run(
    pipe: Pipeline, feeds: dict[str, Sequence[np.ndarray]], fetch: Callable[[Any, int], Any]
) -> list[Any]:
    """Run one batch; returns per sample ``fetch(outputs, i)``, or the exception if that sample failed."""
    count = len(next(iter(feeds.values())))
    try:
        outputs = pipe.run(**{name: list(values) for name, values in feeds.items()})
        return [fetch(outputs, i) for i in range(count)]
    except RuntimeError:
        if count == 1:
            raise
    results: list[Any] = []
    for i in range(count):
        try:
            results.append(_run(pipe, {name: [values[i]] for name, values in feeds.items()}, fetch)[0])
        except RuntimeError as exc:
            results.append(exc)
    return results


def _bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def _i32(value: int, ndim: int = 0) -> np.ndarray:
    return np.array(value, dtype=np.int32).reshape((1,) * ndim)


class SampleDecoder:
    """CPU decoding of a group of samples in a loader worker.

    ``decode`` takes per sample the FLAC bytes, the audio window (first sample, length; at
    ``sample_rate`` Hz) and, when built with ``video=True``, the mp4 bytes and the frame window (first
    frame, stride). It returns per sample ``(audio [4, length] float32, frames [T, H, W, 3] uint8 or
    None)``, or the exception that sample raised.
    """

    def __init__(self, sample_rate: int, frames: int, video: bool, max_batch: int, threads: int = 1) -> None:
        self.video = video
        self.pipe = _sample_pipeline(
            sample_rate, frames, video, batch_size=max_batch, num_threads=threads, device_id=None
        )
        self.pipe.build()

    def decode(
        self,
        flac: Sequence[bytes],
        audio_window: Sequence[tuple[int, int]],
        mp4: Sequence[bytes] = (),
        frame_window: Sequence[tuple[int, int]] = (),
    ) -> list[tuple[np.ndarray, np.ndarray | None] | Exception]:
        feeds = {
            "flac": [_bytes(b) for b in flac],
            "audio_anchor": [_i32(a, 1) for a, _ in audio_window],
            "audio_length": [_i32(n, 1) for _, n in audio_window],
        }
        if self.video:
            feeds |= {
                "mp4": [_bytes(b) for b in mp4],
                "start_frame": [_i32(s) for s, _ in frame_window],
                "stride": [_i32(k) for _, k in frame_window],
            }

        def fetch(outputs: Any, i: int) -> tuple[np.ndarray, np.ndarray | None]:
            audio = np.array(outputs[0][i]).T.copy()  # DALI gives [length, channels]
            return audio, (np.array(outputs[1][i]) if self.video else None)

        return _run(self.pipe, feeds, fetch)


class GpuCropDecoder:
    """GPU decoding straight into crops: per sample ``uint8 [T, K·h, w, 3]`` CUDA tensors (or the exception).

    ``maps`` per sample are ``(mapx, mapy)`` float32 ``[K·h, w]`` from :func:`dataloading.geometry.remap_maps`
    (K views stacked along the height) for an equirect padded with ``pad`` wrapped columns per side.
    """

    def __init__(self, frames: int, max_batch: int, device_id: int, pad: int = 1, threads: int = 2) -> None:
        self.pad = pad
        self.pipe = _gpu_crop_pipeline(
            frames, pad, batch_size=max_batch, num_threads=threads, device_id=device_id
        )
        self.pipe.build()

    def decode(
        self,
        mp4: Sequence[bytes],
        frame_window: Sequence[tuple[int, int]],
        maps: Sequence[tuple[np.ndarray, np.ndarray]],
    ) -> list[torch.Tensor | Exception]:
        feeds = {
            "mp4": [_bytes(b) for b in mp4],
            "start_frame": [_i32(s) for s, _ in frame_window],
            "stride": [_i32(k) for _, k in frame_window],
            "mapx": [mx for mx, _ in maps],
            "mapy": [my for _, my in maps],
        }

        def fetch(outputs: Any, i: int) -> torch.Tensor:
            # Through DLPack the tensor stays on the GPU; clone, since DALI reuses its buffers.
            return torch.from_dlpack(outputs[0][i]).clone()

        return _run(self.pipe, feeds, fetch)
