"""Generate N videos in parallel processes: ``OUT/video_00000.mp4`` + ``.json`` each, and
``OUT/synth.json`` (options, asset fallbacks, skipped assets, failures).

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
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from dataloading.config import StorageConfig
from dataloading.storage import join, write_bytes_atomic
from dataloading.synth.assets import (
    AssetError,
    Catalog,
    build_catalog,
    load_background,
    load_sound,
    stable_seed,
)
from dataloading.synth.evalsets import held_out_sources
from dataloading.synth.render_video import encode_mp4, render_frames
from dataloading.synth.scene import Scene, ground_truth, sample_scene
from dataloading.synth.spatialize import render_scene_audio

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
    storage: StorageConfig = field(default_factory=StorageConfig)


def video_name(index: int) -> str:
    return f"video_{index:05d}"


def scene_for(index: int, opts: SynthOptions, catalog: Catalog, held_out: frozenset[str]) -> Scene:
    """The scene of video ``index``: a function of (seed, index) only."""
    return sample_scene(
        stable_seed("video", opts.seed, index),
        opts.seconds,
        catalog,
        exclude_sources=held_out,
        one_at_a_time=opts.one_at_a_time,
    )


def make_video(index: int, opts: SynthOptions, catalog: Catalog, held_out: frozenset[str]) -> dict:
    """Render and write one video and its ground truth; returns its summary."""
    started, cpu_started = time.perf_counter(), time.process_time()
    scene = scene_for(index, opts, catalog, held_out)
    width, height = opts.size
    skipped: list[dict[str, str]] = []
    try:
        background = load_background(scene.background, width, height)
    except AssetError as exc:  # a broken picture: report it, use a stand-in
        skipped.append({"path": scene.background, "reason": str(exc)})
        scene.background = f"procedural:{scene.seed % 8}"
        background = load_background(scene.background, width, height)
    foa, skipped_sounds = render_scene_audio(scene, opts.rate, lambda a: load_sound(a.path, opts.rate))
    skipped += skipped_sounds
    mp4 = encode_mp4(render_frames(scene, background, opts.fps), foa, opts.fps, opts.rate, opts.size)
    truth = ground_truth(scene, skipped)
    name = video_name(index)
    truth.update(video=f"{name}.mp4", fps=opts.fps, size=list(opts.size), sample_rate=opts.rate)
    write_bytes_atomic(join(opts.out, f"{name}.mp4"), mp4, opts.storage)
    write_bytes_atomic(join(opts.out, f"{name}.json"), json.dumps(truth, indent=1).encode(), opts.storage)
    return {
        "video": name,
        "bytes": len(mp4),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "cpu_seconds": round(time.process_time() - cpu_started, 2),  # wall time depends on the load
        "skipped": skipped,
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
    summary = {
        "options": {k: v for k, v in asdict(opts).items() if k != "storage"},
        "asset_fallbacks": list(catalog.fallbacks),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "videos": results,
        "failed": [r["video"] for r in results if "error" in r],
    }
    write_bytes_atomic(join(opts.out, "synth.json"), json.dumps(summary, indent=1).encode(), opts.storage)
    return summary
