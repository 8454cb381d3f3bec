"""`avsa preprocess` (actors, detection, shards) vs a PyAV-only transcode: clips/s a core, after start-up."""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from dataloading.config import PreprocessConfig
from dataloading.transcode import CODEC_THREADS, ENCODERS, encoder_options, flac_bits


def make_inputs(folder: Path, videos: int, seconds: float, size: str) -> list[Path]:
    """Synthetic 360° videos (H.264 at 30 fps + 4-channel 48 kHz AAC) via `avsa synth`, kept in ``folder``
    (named after the arguments) for re-runs."""
    found = sorted(folder.glob("video_*.mp4"))
    if len(found) == videos:
        return found
    from cluster.cli import main as avsa

    args = ["--out", str(folder), "--videos", str(videos), "--seconds", str(seconds), "--size", size]
    if avsa(["synth", *args, "--fps", "30", "--workers", "2", "--no-fetch"]) != 0:
        raise SystemExit("avsa synth failed")
    return sorted(folder.glob("video_*.mp4"))


def floor_transcode(path: Path, cfg: PreprocessConfig) -> int:
    """The floor: only PyAV, in one forward pass over each stream. Decode the video once, with our decoder
    threads; per clip, scale the latest source frame at each output time and encode it with our encoder and
    options; the audio resampled to 24 kHz as FLAC of our bit depth. Returns the number of clips."""
    width, height = cfg.video_size
    per_clip = round(cfg.clip_seconds * cfg.fps)
    samples = round(cfg.clip_seconds * cfg.audio_rate)
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        layout, sample_format = audio.layout.name, "s16" if flac_bits(audio) == 16 else "s32"
        resampler = av.AudioResampler(format=sample_format, layout=layout, rate=cfg.audio_rate)
        pcm = np.concatenate(
            [r.to_ndarray().reshape(-1, 4) for f in container.decode(audio) for r in resampler.resample(f)]
        )
    clips = 0
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        video.codec_context.thread_count = CODEC_THREADS
        duration = min(float(video.duration * video.time_base), len(pcm) / cfg.audio_rate)
        decoded = container.decode(video)
        upcoming, latest, scaled = next(decoded), None, None
        for c in range(int(duration // cfg.clip_seconds)):
            out = io.BytesIO()
            with av.open(out, "w", format="mp4") as mp4:
                stream = mp4.add_stream(ENCODERS[cfg.codec], rate=cfg.fps)
                stream.width, stream.height, stream.pix_fmt, stream.gop_size = (
                    width,
                    height,
                    "yuv420p",
                    cfg.gop,
                )
                stream.codec_context.options = encoder_options(cfg)
                for i in range(per_clip):
                    t = c * cfg.clip_seconds + i / cfg.fps
                    while upcoming is not None and (latest is None or upcoming.time <= t + 1e-4):
                        latest, scaled, upcoming = upcoming, None, next(decoded, None)
                    if scaled is None:
                        scaled = latest.reformat(
                            width=width, height=height, format="yuv420p", interpolation="AREA"
                        )
                    scaled.pts = i
                    mp4.mux(stream.encode(scaled))
                mp4.mux(stream.encode(None))
            chunk = np.ascontiguousarray(pcm[c * samples : (c + 1) * samples].reshape(1, -1))
            flac = io.BytesIO()
            with av.open(flac, "w", format="flac") as sink:
                stream = sink.add_stream("flac", rate=cfg.audio_rate, layout=layout)
                frame = av.AudioFrame.from_ndarray(chunk, format=sample_format, layout=layout)
                frame.sample_rate = cfg.audio_rate
                sink.mux(stream.encode(frame))
                sink.mux(stream.encode(None))
            clips += 1
    return clips


def main(argv: list[str]) -> float:
    parser = argparse.ArgumentParser(prog="python -m bench preprocess", description=__doc__)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each input video")
    parser.add_argument("--size", default="1024x512", help="input size (output is 512x256)")
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="Ray actors = CPU cores used"
    )
    parser.add_argument("--cache", default=".avsa/bench", help="where synthetic inputs are kept for re-runs")
    args = parser.parse_args(argv)
    cfg = PreprocessConfig(clip_seconds=args.clip_seconds, shard_size=8, workers=args.workers)
    folder = Path(args.cache, f"preprocess-{args.videos}x{args.seconds:g}s-{args.size}")
    inputs = make_inputs(folder, args.videos, args.seconds, args.size)

    started, cpu = time.perf_counter(), time.process_time()
    floor_clips = sum(floor_transcode(p, cfg) for p in inputs)
    floor_wall, floor_cpu = time.perf_counter() - started, time.process_time() - cpu
    floor_rate = floor_clips / floor_wall  # one process on one core

    from cluster.commands.preprocess import connect

    connect(None, args.workers)
    import ray

    from cluster.preprocess import run

    scratch = tempfile.mkdtemp(prefix="avsa-bench-preprocess-")
    listing = Path(scratch, "inputs.txt")  # exactly the floor's inputs, whatever else the cache holds
    listing.write_text("".join(f"{p.resolve()}\n" for p in inputs))
    try:
        started = time.perf_counter()
        manifest = run(str(listing), str(Path(scratch, "shards")), cfg, progress=False)
        ours_wall = time.perf_counter() - started
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    run_info = manifest.run
    ours_clips, actors = manifest.totals()["samples"], run_info.actors
    # The floor runs in this process, whose imports (PyAV, numpy) were paid before its clock started; the
    # actors' start-up (a Python process each, importing torch, OpenCV, PyAV) is likewise a fixed cost of a
    # run, not of its clips, so the rate counts the shard stage: everything after the inputs were probed.
    startup = run_info.probe_seconds
    ours_rate = ours_clips / (ours_wall - startup) / actors
    end_to_end = ours_clips / ours_wall / actors

    print(f"inputs: {len(inputs)} videos x {args.seconds:g} s ({args.size}) -> {cfg.clip_seconds:g} s clips")
    print(f"floor (PyAV decode + VP9/FLAC encode, 1 process): {floor_clips} clips in {floor_wall:.1f} s")
    print(f"  ({floor_cpu:.1f} CPU s) = {floor_rate:.3f} clips/s per core")
    print(
        f"ours (avsa preprocess, {actors} actors, detection, shards, manifest): "
        f"{ours_clips} clips in {ours_wall:.1f} s, of which start-up + probing {startup:.1f} s"
    )
    print(
        f"  = {ours_rate:.3f} clips/s per core after start-up "
        f"({end_to_end:.3f} with it: {end_to_end / floor_rate:.3f} of the floor)"
    )
    ours_cpu, floor_cpu_clip = (
        run_info.shard_cpu_seconds / max(1, ours_clips),
        floor_cpu / max(1, floor_clips),
    )
    print(
        f"  shard work {ours_cpu:.3f} CPU s/clip vs floor {floor_cpu_clip:.3f}: "
        f"{floor_cpu_clip / ours_cpu:.3f} per CPU-second (idle-machine estimate)"
    )
    return ours_rate / floor_rate
