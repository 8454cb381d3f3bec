"""Generate N videos in parallel processes: ``OUT/video_00000.mp4`` + ``.json`` each, and
``OUT/synth.json`` (options, asset fallbacks, skipped assets, failures). With ``layout`` "starss23" or
"yt360" the same scenes are written as those datasets' trees instead (see :func:`layout_files`).

Video ``i`` depends only on (seed, i), so any subset can be regenerated and any worker count
gives the same bytes. A bad asset drops that one sound (reported); a video that fails for any
other reason is reported and the run goes on.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from dataloading import seeds
from dataloading.config import StorageConfig, SynthConfig, World
from dataloading.dcase import format_labels
from dataloading.layouts import STARSS_AUDIO, STARSS_LABELS, STARSS_VIDEO, YT_AUDIO, YT_VIDEO, Layout
from dataloading.seeds import stable_seed
from dataloading.storage import join, write_bytes_atomic
from dataloading.synth.assets import (
    AssetError,
    Catalog,
    build_catalog,
    load_background,
    load_sound,
)
from dataloading.synth.evalsets import held_out_sources
from dataloading.synth.render_video import encode_m4a, encode_mp4, render_frames
from dataloading.synth.scene import Scene, ground_truth, sample_scene
from dataloading.synth.spatialize import render_scene_audio
from dataloading.synth.trees import (
    STARSS_RATE,
    STARSS_SOUNDS,
    scene_events,
    starss_stem,
    wav_bytes,
    yt_lists,
    yt_stem,
)

log = logging.getLogger(__name__)


@dataclass
class SynthOptions:
    out: str
    videos: int = 20
    seconds: float = 60.0
    seed: int = 0
    workers: int = 2
    size: tuple[int, int] = (1024, 512)  # equirect width, height in pixels (2:1)
    fps: int = 30
    rate: int = 48000  # Hz, as YouTube serves spatial audio
    one_at_a_time: bool = False  # sources take turns (for localisation tests)
    world: World = "default"  # what the scenes hold (dataloading.synth.scene.WORLDS)
    # How the scenes are written: "files" (video_NNNNN.mp4 with FOA inside + .json ground truth), or the
    # tree of STARSS23 (wav + video-only mp4 + label CSV; needs rate 24000) or YT-360 (mp4 + m4a + lists).
    layout: Layout = "files"
    storage: StorageConfig = field(default_factory=StorageConfig)


def options_of(cfg: SynthConfig, storage: StorageConfig, out: str | None = None) -> SynthOptions:
    """The generator's options for the ``synth`` config section, writing to ``out`` (default
    ``cfg.out``); a STARSS23 tree gets that dataset's audio rate."""
    opts = SynthOptions(
        out=out or cfg.out,
        videos=cfg.videos,
        seconds=cfg.seconds,
        seed=cfg.seed,
        workers=cfg.workers,
        size=cfg.size,
        fps=cfg.fps,
        layout=cfg.layout,
        world=cfg.world,
        storage=storage,
    )
    if cfg.layout == "starss23":
        opts.rate = STARSS_RATE
    return opts


def video_name(index: int) -> str:
    return f"video_{index:05d}"


def scene_for(index: int, opts: SynthOptions, catalog: Catalog, held_out: frozenset[str]) -> Scene:
    """The scene of video ``index``: a function of (seed, index) only (and of the layout: STARSS23 scenes
    draw only sounds that have a STARSS23 class, so that every audible event is labelled)."""
    return sample_scene(
        stable_seed(seeds.VIDEO, opts.seed, index),
        opts.seconds,
        catalog,
        world=opts.world,
        exclude_sources=held_out,
        one_at_a_time=opts.one_at_a_time,
        sound_labels=STARSS_SOUNDS if opts.layout == "starss23" else None,
    )


@dataclass
class Rendered:
    """A scene rendered: its equirect background (uint8 [H, W, 3]), FOA [4, N] float32 at the options'
    rate, and the assets that were skipped (the scene's sources already say what was rendered)."""

    scene: Scene
    background: np.ndarray
    foa: np.ndarray
    skipped: list[dict[str, str]]

    def frames(self, fps: int) -> Iterator[np.ndarray]:
        return render_frames(self.scene, self.background, fps)


def render(scene: Scene, opts: SynthOptions) -> Rendered:
    """Load the background (a procedural stand-in for a broken picture) and render the FOA of ``scene``."""
    width, height = opts.size
    skipped: list[dict[str, str]] = []
    try:
        background = load_background(scene.background, width, height)
    except AssetError as exc:  # a broken picture: report it, use a stand-in
        skipped.append({"path": scene.background, "reason": str(exc)})
        scene.background = f"procedural:{scene.seed % 8}"
        background = load_background(scene.background, width, height)
    foa, skipped_sounds = render_scene_audio(scene, opts.rate, lambda a: load_sound(a.path, opts.rate))
    return Rendered(scene, background, foa, skipped + skipped_sounds)


def layout_files(index: int, rendered: Rendered, opts: SynthOptions) -> dict[str, bytes]:
    """The files (path relative to ``opts.out`` -> bytes) of video ``index`` in ``opts.layout``:

    - files: ``video_NNNNN.mp4`` (H.264 + 4-channel AAC FOA) and ``video_NNNNN.json`` (ground truth);
    - starss23: ``foa_dev/<stem>.wav`` (24-bit PCM FOA at 24 kHz), ``video_dev/<stem>.mp4`` (video only),
      ``metadata_dev/<stem>.csv`` (the DCASE labels of :func:`~dataloading.synth.trees.scene_events`),
      with ``<stem>`` from :func:`~dataloading.synth.trees.starss_stem`;
    - yt360: ``video/<stem>.mp4`` (video only) and ``audio/<stem>.m4a`` (AAC 4.0 FOA), ``<stem>`` from
      :func:`~dataloading.synth.trees.yt_stem` (the lists are written once for all, by :func:`generate`).
    """
    frames, size = rendered.frames(opts.fps), opts.size
    if opts.layout == "starss23":
        if opts.rate != STARSS_RATE:
            raise ValueError(f"STARSS23 audio is {STARSS_RATE} Hz; set SynthOptions.rate = {STARSS_RATE}")
        stem = starss_stem(index, opts.videos)
        return {
            f"{STARSS_AUDIO}/{stem}.wav": wav_bytes(rendered.foa, opts.rate),
            f"{STARSS_VIDEO}/{stem}.mp4": encode_mp4(frames, None, opts.fps, opts.rate, size),
            f"{STARSS_LABELS}/{stem}.csv": format_labels(scene_events(rendered.scene)).encode(),
        }
    if opts.layout == "yt360":
        stem = yt_stem(opts.seed, index)
        return {
            f"{YT_VIDEO}/{stem}.mp4": encode_mp4(frames, None, opts.fps, opts.rate, size),
            f"{YT_AUDIO}/{stem}.m4a": encode_m4a(rendered.foa, opts.rate),
        }
    name = video_name(index)
    truth = ground_truth(rendered.scene, rendered.skipped)
    truth.update(video=f"{name}.mp4", fps=opts.fps, size=list(opts.size), sample_rate=opts.rate)
    return {
        f"{name}.mp4": encode_mp4(frames, rendered.foa, opts.fps, opts.rate, size),
        f"{name}.json": json.dumps(truth, indent=1).encode(),
    }


def make_video(index: int, opts: SynthOptions, catalog: Catalog, held_out: frozenset[str]) -> dict:
    """Render and write one video and its ground truth (in ``opts.layout``); returns its summary."""
    started, cpu_started = time.perf_counter(), time.process_time()
    rendered = render(scene_for(index, opts, catalog, held_out), opts)
    files = layout_files(index, rendered, opts)
    for relative, data in files.items():
        write_bytes_atomic(join(opts.out, relative), data, opts.storage)
    return {
        "video": video_name(index),
        "files": sorted(files),
        "bytes": sum(len(data) for data in files.values()),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "cpu_seconds": round(time.process_time() - cpu_started, 2),  # wall time depends on the load
        "skipped": rendered.skipped,
    }


def _task(index: int, opts: SynthOptions, catalog: Catalog, held_out: frozenset[str]) -> dict:
    try:
        return make_video(index, opts, catalog, held_out)
    except Exception:
        return {"video": video_name(index), "error": traceback.format_exc(limit=5)}


def generate(opts: SynthOptions, catalog: Catalog | None = None, progress: bool = True) -> dict:
    """Make ``opts.videos`` videos with ``opts.workers`` processes; returns the run summary
    (also written to ``OUT/synth.json``)."""
    catalog = catalog or build_catalog()
    held_out = frozenset(held_out_sources(catalog))
    started = time.perf_counter()
    results = []
    bar = tqdm(total=opts.videos, unit="video", desc="avsa synth", disable=not progress)
    if opts.workers <= 1:
        for i in range(opts.videos):
            results.append(_task(i, opts, catalog, held_out))
            bar.update()
    else:
        # spawn: fresh interpreters, no inherited threads or locks from the parent
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(opts.workers, mp_context=context) as pool:
            futures = [pool.submit(_task, i, opts, catalog, held_out) for i in range(opts.videos)]
            for future in as_completed(futures):
                results.append(future.result())
                bar.update()
    bar.close()
    results.sort(key=lambda r: r["video"])
    for r in results:
        for s in r.get("skipped", []):
            log.warning("%s: skipped asset %s (%s)", r["video"], s["path"], s["reason"])
        if "error" in r:
            log.error("%s failed:\n%s", r["video"], r["error"])
    if opts.layout == "yt360":  # the split and segment lists name the clips that were made
        made = [i for i, r in enumerate(results) if "error" not in r]
        for name, data in yt_lists(opts.seed, made, opts.videos).items():
            write_bytes_atomic(join(opts.out, name), data, opts.storage)
    summary = {
        "options": {k: v for k, v in asdict(opts).items() if k != "storage"},
        "asset_fallbacks": list(catalog.fallbacks),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "videos": results,
        "failed": [r["video"] for r in results if "error" in r],
    }
    write_bytes_atomic(join(opts.out, "synth.json"), json.dumps(summary, indent=1).encode(), opts.storage)
    return summary
