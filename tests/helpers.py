"""Builders that several test modules share, so that no test module imports from another: configs,
input videos (good and bad), preprocessed datasets and how to check them, evaluation sets, the
evaluation service, stand-ins for a checkpointing engine and a malicious pickle, direction helpers and
schema records. Synthetic training shards that skip preprocessing are in
:mod:`dataloading.synth.samples` (benchmarks use them too)."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf
import torch

from cluster.cli import main as avsa
from dataloading.config import StorageConfig
from dataloading.dcase import FRAME_SECONDS, Event, format_labels, parse_labels
from dataloading.foa import encode_plane_wave
from dataloading.schema import (
    EXTENSIONS,
    INPUT_ACCEPTED,
    INPUT_REJECTED,
    InputEntry,
    Manifest,
    RunInfo,
    Settings,
    ShardEntry,
)
from dataloading.shardwriter import sha256_url
from dataloading.storage import filesystem, join, register_webdataset_opener, write_bytes_atomic
from dataloading.synth.evalsets import EVALSET_SCHEMA_VERSION, write_shards
from dataloading.synth.render_video import draw_sprite
from dataloading.transcode import flac_bytes
from dataloading.viewpoints import angular_distance
from evaluation.service import EvalService
from trainer.config import Config, EvalConfig, load_config
from trainer.data import TINY

# ----- dataset trees ------------------------------------------------------------------------------
SEED_CLASSES = (0, 3, 8)  # female speech, telephone, music: each a tone of its own pitch below


def write_starss_tree(
    root: Path, train: int = 3, test: int = 2, seconds: float = 6.0, rate: int = 24000, seed: int = 0
) -> dict[str, list[Event]]:
    """A STARSS23-format tree (foa_dev wav + metadata_dev csv; no video) of plane-wave tones: class c
    of :data:`SEED_CLASSES` is a tone at 300·(k+1) Hz (k its position there), from a fixed direction,
    on for a random stretch of whole 100-ms frames. Each recording has two events that overlap.
    Returns ``{split folder/stem: events}`` as the CSVs hold them (whole degrees)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    frames = round(seconds / FRAME_SECONDS)
    per_frame = round(rate * FRAME_SECONDS)
    truth: dict[str, list[Event]] = {}
    for index in range(train + test):
        split = "dev-train-sony" if index < train else "dev-test-sony"
        stem = f"fold{3 if index < train else 4}_room{index % 2 + 1}_mix{index + 1:03d}"
        foa = torch.zeros(4, n, dtype=torch.float64)
        events: list[Event] = []
        first_on = int(rng.integers(0, frames // 3))
        for source, k in enumerate(rng.choice(len(SEED_CLASSES), size=2, replace=False)):
            on = first_on if source == 0 else first_on + frames // 4  # the second starts inside the first
            off = min(frames, on + frames // 2)
            az, el = float(rng.uniform(-math.pi, math.pi)), float(rng.uniform(-0.5, 0.5))
            t = torch.arange(n, dtype=torch.float64) / rate
            tone = 0.3 * torch.sin(2 * math.pi * 300.0 * (k + 1) * t)
            gate = torch.zeros(n, dtype=torch.float64)
            gate[on * per_frame : off * per_frame] = 1.0
            foa += encode_plane_wave(tone * gate, az, el)
            cls = SEED_CLASSES[k]
            events += [Event(f, cls, source, az, el) for f in range(on, off)]
        foa += 1e-3 * torch.randn(4, n, dtype=torch.float64, generator=torch.Generator().manual_seed(index))
        for folder in ("foa_dev", "metadata_dev"):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
        sf.write(root / "foa_dev" / split / f"{stem}.wav", foa.T.numpy(), rate, subtype="PCM_24")
        csv = format_labels(events)
        (root / "metadata_dev" / split / f"{stem}.csv").write_text(csv)
        truth[f"{split}/{stem}"] = parse_labels(csv, stem)  # as written: whole degrees
    return truth


# ----- configs ------------------------------------------------------------------------------------
def tiny_config(tmp: Path, **overrides: Any) -> Config:
    """Tiny model and inputs on synthetic data, no tracking, metrics of every step, checkpoints under
    ``tmp``."""
    base = {**TINY, "train.checkpoint_url": str(tmp / "ckpt"), "tracking.uri": "off", "tracking.log_every": 1}
    return load_config(None, base | overrides)


# ----- input videos -------------------------------------------------------------------------------
AAC_LAYOUTS = {1: "mono", 2: "stereo", 4: "4.0"}


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
        audio = container.add_stream("aac", rate=rate, layout=AAC_LAYOUTS[channels]) if channels else None
        for i in range(round(seconds * fps)):
            rgb = np.full((size[1], size[0], 3), (i * 7) % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            samples = (0.1 * rng.standard_normal((channels, round(seconds * rate)))).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=AAC_LAYOUTS[channels])
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


# ----- preprocessed datasets ----------------------------------------------------------------------
VIDEOS, CLIPS_PER_VIDEO = 3, 2  # 2.5 s videos make two whole 1 s clips


def local_copy(url: str, storage: StorageConfig | None, folder: str) -> str:
    """Download ``url`` into ``folder``; returns the local path."""
    fs, path = filesystem(url, storage)
    target = os.path.join(folder, path.rsplit("/", 1)[-1])
    fs.get_file(path, target)
    return target


def check_dataset(output: str, manifest: dict, storage: StorageConfig | None) -> None:
    """Every shard: checksum, `tar tf` listing, webdataset read, DALI read through the index;
    counts agree with the manifest."""
    totals = manifest["totals"]
    assert totals["accepted"] + totals["rejected"] == totals["inputs"]
    keys = [k for shard in manifest["shards"].values() for k in shard["keys"]]
    assert len(keys) == len(set(keys)) == totals["samples"]
    assert all(shard["node"] for shard in manifest["shards"].values())  # who wrote it
    with tempfile.TemporaryDirectory() as folder:
        tars, indexes = [], []
        for name, shard in manifest["shards"].items():
            stem = join(output, name)
            assert sha256_url(f"{stem}.tar", storage) == shard["sha256"]
            tars.append(local_copy(f"{stem}.tar", storage, folder))
            indexes.append(local_copy(f"{stem}.idx", storage, folder))
            listing = subprocess.run(["tar", "tf", tars[-1]], capture_output=True, text=True, check=True)
            assert listing.stdout.split() == [f"{k}.{e}" for k in shard["keys"] for e in EXTENSIONS]

        import webdataset as wds

        register_webdataset_opener(storage)
        urls = [f"{join(output, name)}.tar" for name in manifest["shards"]]
        seen = []
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            meta = json.loads(sample["json"])
            assert meta["key"] == sample["__key__"] and meta["schema_version"] == manifest["schema_version"]
            assert sample["mp4"][4:8] == b"ftyp" and sample["flac"][:4] == b"fLaC"
            seen.append(sample["__key__"])
        assert seen == keys

        (video, audio, rate, meta), *_ = dali_read(tars, indexes, batch_size=2)
        assert [v.shape for v in video] == [(8, 128, 256, 3)] * 2
        assert [a.shape for a in audio] == [(24000, 4)] * 2 and rate == [24000.0] * 2


def dali_read(tars: list[str], indexes: list[str], batch_size: int, batches: int = 1) -> list[tuple]:
    """Read samples with DALI's webdataset reader + CPU video and audio decoders.

    Returns per batch: video [8, H, W, 3] arrays, audio [N, 4] arrays, sample rates, json bytes.
    """
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None)
    def pipe():
        mp4, flac, meta = fn.readers.webdataset(
            paths=tars, index_paths=indexes, ext=list(EXTENSIONS), missing_component_behavior="error"
        )
        video = fn.decoders.video(mp4, device="cpu", sequence_length=8)
        audio, rate = fn.decoders.audio(flac, downmix=False, dtype=types.FLOAT)
        return video, audio, rate, meta

    pipeline = pipe()
    pipeline.build()
    out = []
    for _ in range(batches):
        video, audio, rate, meta = pipeline.run()
        n = len(video)
        out.append(
            (
                [np.asarray(video.at(i)) for i in range(n)],
                [np.asarray(audio.at(i)) for i in range(n)],
                [float(np.asarray(rate.at(i))) for i in range(n)],
                [bytes(np.asarray(meta.at(i))) for i in range(n)],
            )
        )
    return out


# ----- evaluation sets and the evaluation service -------------------------------------------------
EVALSET_RATE = 24000
EVALSET_SECONDS = 0.25
TONES_HZ = (400.0, 1500.0, 5000.0)


def plane_wave_clip(signal: np.ndarray, az: float, el: float, rng: np.random.Generator) -> np.ndarray:
    """FOA ``[4, N]`` of ``signal`` arriving from ``(az, el)`` (radians) with a little noise, peak 0.9."""
    foa = encode_plane_wave(torch.from_numpy(signal), az, el).numpy()
    foa = foa + 0.01 * rng.standard_normal(foa.shape)
    return foa * (0.9 / np.abs(foa).max())


def write_evalset_manifest(url: str, kind: str, splits: dict[str, list[dict]], **extra: object) -> None:
    """The eval set's ``manifest.json`` at ``url``: its kind, audio format and each split's shards."""
    manifest = {
        "schema_version": EVALSET_SCHEMA_VERSION,
        "kind": kind,
        "sample_rate": EVALSET_RATE,
        "seconds": EVALSET_SECONDS,
        **extra,
    }
    manifest["splits"] = {name: {"shards": shards} for name, shards in splits.items()}
    write_bytes_atomic(join(url, "manifest.json"), json.dumps(manifest).encode())


def write_classification_set(url: str, per_class: int = 12, seed: int = 0) -> None:
    """Classes are tones (with harmonics) from random directions; test gets half as many clips."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(EVALSET_SECONDS * EVALSET_RATE)) / EVALSET_RATE
    splits = {}
    for part, count in (("train", per_class), ("test", per_class // 2)):
        samples = []
        for label, f0 in enumerate(TONES_HZ):
            for i in range(count):
                wave = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) / h for h in (1, 2, 3))
                az, el = rng.uniform(-np.pi, np.pi), rng.uniform(-0.5, 0.7)
                meta = {"label": f"tone{label}", "label_index": label, "split": part}
                flac = flac_bytes(plane_wave_clip(wave, az, el, rng), EVALSET_RATE, bits=16)
                samples.append((f"{part}_{label}_{i:04d}", {"flac": flac, "json": json.dumps(meta).encode()}))
        splits[part] = write_shards(url, f"cls-{part}", iter(samples), None)
    write_evalset_manifest(url, "classification", splits, classes=[f"tone{i}" for i in range(len(TONES_HZ))])


def write_doa_set(url: str, clips: int = 40, seed: int = 0) -> None:
    """Noise plane waves at random directions, ``clips`` per split (train, test); in the test split
    every fifth clip has a second source (left out by the tasks)."""
    rng = np.random.default_rng(seed)
    splits = {}
    for part in ("train", "test"):
        samples = []
        for i in range(clips):
            count = 2 if part == "test" and i % 5 == 4 else 1
            foa, sources = 0.0, []
            for _ in range(count):
                az, el = rng.uniform(-np.pi, np.pi), rng.uniform(-0.5, 0.7)
                noise = rng.standard_normal(int(EVALSET_SECONDS * EVALSET_RATE))
                foa = foa + plane_wave_clip(noise, az, el, rng)
                sources.append({"azimuth_deg": math.degrees(az), "elevation_deg": math.degrees(el)})
            flac = flac_bytes(foa * 0.45, EVALSET_RATE, bits=16)
            samples.append(
                (f"doa_{part}_{i:05d}", {"flac": flac, "json": json.dumps({"sources": sources}).encode()})
            )
        splits[part] = write_shards(url, f"doa-{part}", iter(samples), None)
    write_evalset_manifest(url, "doa", splits)


SERVICE_ARGS = ("--clip-count", "16", "--eval.probe_epochs", "10", "--device", "cpu", "--poll", "1")


@dataclass
class Trained:
    """A tracked training run with checkpoints, and the eval sets and arguments to evaluate it with."""

    uri: str
    run_id: str
    env: dict[str, str]
    experiment: str
    suite_args: list[str]
    suite: EvalConfig
    trusted: str  # the folder every test's checkpoints are under

    def run(self) -> Any:
        """The tracked training run (an MLflow ``Run``)."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri).get_run(self.run_id)

    def run_beside(self, name: str) -> str:
        """A new, empty run named ``name`` in the training run's experiment; returns its id."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri).create_run(self.run().info.experiment_id, run_name=name).info.run_id

    def service(self, device: str = "auto") -> EvalService:
        """An in-process service watching only this module's experiment."""
        suite = replace(self.suite, experiments=(self.experiment,), device=device)
        return EvalService(self.uri, suite, trusted_roots=[self.trusted])


def start_service(trained: Trained, log: Path) -> subprocess.Popen:
    """`avsa eval-service` watching ``trained``'s experiment, as a subprocess appending to ``log``."""
    cmd = [
        sys.executable,
        "-m",
        "cluster.cli",
        "eval-service",
        "--tracking-uri",
        trained.uri,
        "--lease",
        "60",
    ]
    return subprocess.Popen(
        [*cmd, *trained.suite_args], env=trained.env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


# ----- checkpoints: a stand-in engine, a pickle that runs code ---------------------------------------
class FakeEngine:
    """Writes one file per save, as DeepSpeed writes its states into ``save_dir/tag``."""

    module = torch.nn.BatchNorm1d(2)

    def save_checkpoint(self, save_dir: str, tag: str, save_latest: bool) -> None:
        os.makedirs(os.path.join(save_dir, tag))
        Path(save_dir, tag, "mp_rank_00_model_states.pt").write_bytes(b"weights")


class Payload:
    """Unpickled in full, creates the folder ``path``: stands for any code a pickle can run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return (os.makedirs, (self.path,))


# ----- directions and sprites ---------------------------------------------------------------------
def angle_deg(az1: float, el1: float, az2: float, el2: float) -> float:
    """Great-circle angle in degrees between two directions given in radians."""
    return math.degrees(float(angular_distance(np.array(az1), np.array(el1), np.array(az2), np.array(el2))))


def alpha_of(
    sprite: np.ndarray, az: float, el: float, width: float, size: tuple[int, int] = (256, 128)
) -> tuple[np.ndarray, np.ndarray]:
    """(alpha [H, W], colour on black [H, W, 3]) of a sprite drawn alone on a ``size`` (W, H) equirect
    frame at direction ``(az, el)`` with angular ``width`` (radians)."""
    black = np.zeros((size[1], size[0], 3), np.uint8)
    white = np.full_like(black, 255)
    draw_sprite(black, sprite, az, el, width)
    draw_sprite(white, sprite, az, el, width)
    alpha = 1 - (white.astype(float) - black.astype(float)).mean(axis=2) / 255
    return alpha, black


# ----- schema records -----------------------------------------------------------------------------
PREPROCESS_SETTINGS = Settings(
    input="raw/",
    clip_seconds=1.0,
    shard_size=4,
    fps=16,
    codec="vp9",
    gop=8,
    audio_rate=24000,
    input_format="auto",
    detector="builtin",
    video_size=(256, 128),
    layout="starss23",
)


def sample_manifest() -> Manifest:
    """A small manifest of every record type: one shard, one accepted and one rejected input."""
    shard = ShardEntry(2, 4096, "ab" * 32, 90, ["a_c00000", "a_c00001"], {"in/a.mp4": 2}, "10.0.0.1")
    return Manifest(
        PREPROCESS_SETTINGS,
        shards={"shard-000000": shard},
        inputs={
            "in/a.mp4": InputEntry(INPUT_ACCEPTED, duration_s=2.5, clips=2, shards=["shard-000000"]),
            "in/b.mp4": InputEntry(INPUT_REJECTED, reason="audio has 2 channels"),
        },
        run=RunInfo(1.0, 2.0, 2, 0.5, 1.5, {"written": 1}, {"10.0.0.1": 1}, 0),
    )


# ----- Ray jobs ---------------------------------------------------------------------------------------
RAY_CLI = str(Path(sys.executable).parent / "ray")


def submit_job(
    env: dict[str, str],
    *entrypoint: str,
    env_vars: dict[str, str] | None = None,
    working_dir: Path | None = None,
) -> subprocess.Popen:
    """``ray job submit -- entrypoint`` as a user runs it, in the background: the client follows the
    job's logs (stdout and stderr merged) and exits with the job's status. ``env`` points the client at
    a cluster; ``env_vars`` reach the job's processes on every node through the runtime env, and
    ``working_dir`` is uploaded for them."""
    cmd = [RAY_CLI, "job", "submit"]
    if working_dir is not None:
        cmd += ["--working-dir", str(working_dir)]
    if env_vars:
        cmd += ["--runtime-env-json", json.dumps({"env_vars": env_vars})]
    return subprocess.Popen(
        [*cmd, "--", *entrypoint],
        env=env,
        cwd=working_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def job_output(job: subprocess.Popen, timeout_s: float) -> tuple[int, str]:
    """(exit status, logs) of a :func:`submit_job` client; fails the test, after stopping the client,
    if the job still runs after ``timeout_s`` seconds."""
    try:
        logs, _ = job.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        job.kill()
        logs, _ = job.communicate()
        message = f"the Ray job still ran after {timeout_s:.0f} s; its logs end:\n{logs[-3000:]}"
        raise AssertionError(message) from None
    return job.returncode, logs


def finish_job(job: subprocess.Popen, timeout_s: float = 480) -> str:
    """The logs of a :func:`submit_job` client, after asserting that its job succeeded."""
    code, logs = job_output(job, timeout_s)
    assert code == 0, logs[-4000:]
    return logs


def run_job(env: dict[str, str], *entrypoint: str, timeout_s: float = 480, **options: Any) -> str:
    """Submit a job, wait for it, assert it succeeded; its logs (see :func:`submit_job`)."""
    return finish_job(submit_job(env, *entrypoint, **options), timeout_s)


# ----- what a rank logged ------------------------------------------------------------------------------
class Captured(logging.Handler):
    """The messages the loggers ``names`` emit at INFO and above, kept for a test (e.g. returned from a
    rank run by :func:`tests.distributed.run_distributed`)."""

    def __init__(self, *names: str) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        for name in names:
            logging.getLogger(name).addHandler(self)
            logging.getLogger(name).setLevel(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
