"""The training loader: shards -> DALI decode -> K viewpoint crops with steered FOA features, per rank.

    loader = build_loader(cfg.data, rank, world_size, storage=cfg.storage, device="cuda")
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)
        for batch in loader:            # len(loader) batches, the same on every rank
            ...
        state = loader.state_dict()     # saved with a checkpoint; load_state_dict resumes mid-epoch

Each rank reads its stream of samples (:class:`dataloading.epoch.EpochPlan`); loader worker w of
``cfg.workers`` prepares positions p ≡ w (mod workers): one ranged read, JSON, DALI decode of the FOA
window (and, without a GPU, of the frame window plus the K crops), viewpoints from the configured
sampler. ``torch.utils.data.DataLoader`` hands the workers' items back round-robin, so the main
process sees positions in order whatever the worker count. There, batches of ``batch_size`` good clips
are assembled; with a GPU the video is decoded and cropped by DALI on the device. Bad samples (missing,
truncated, undecodable, bad JSON) are counted, logged once with key and shard, and replaced by the
next position of the stream, so every rank still yields exactly ``len(loader)`` batches.

All randomness of a sample is seeded by its identity in the epoch, and that of a batch's augmentations on
the GPU by its first sample's (see :mod:`dataloading.epoch`), never by the rank. So ``state_dict`` needs
only the epoch, the batch count, this rank's stream position and what earlier segments of the epoch
consumed; ``load_state_dict`` takes every saving rank's state and resumes on any world size: the same
world size continues each rank's own stream exactly, another splits the samples not consumed yet.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from dataloading import seeds
from dataloading.augment import augment_views
from dataloading.batch import Batch, BatchBuilder, Clip, to_uint8
from dataloading.config import DataConfig, StorageConfig
from dataloading.dali_pipeline import GpuCropDecoder, SampleDecoder, trim_window
from dataloading.epoch import EpochPlan
from dataloading.feature_stats import FeatureStats
from dataloading.geometry import crop_views, stacked_remap_maps, unstack_remapped
from dataloading.schema import DetectedObject, SampleMeta, SchemaError
from dataloading.shards import BadSample, CompletePlan, ShardReader, list_shards
from dataloading.viewpoints import Cues, sample_viewpoints

log = logging.getLogger(__name__)

# Samples a worker decodes per DALI run: amortises the run overhead, keeps a worker's latency low.
_GROUP = 4


@dataclass
class Skipped:
    """A stream position whose sample could not be used, and why."""

    position: int
    key: str
    shard: str
    reason: str
    truncated: bool = False


@dataclass(kw_only=True)  # many neighbouring fields of one type: a swap must not pass unnoticed
class _Sample:
    """A sample read and planned for decoding: its members, JSON, generator and windows.

    The frame window is drawn uniformly within the clip (every ``stride``-th frame for clips at a
    multiple of the training rate); the audio window is centred on it, kept inside the clip where it
    fits. ``mp4`` is already trimmed to the window's GOPs, starting at frame ``decode_start`` of it.
    """

    position: int
    key: str
    shard: str
    meta: SampleMeta
    rng: np.random.Generator
    flac: bytes
    mp4: bytes
    start_frame: int  # in the clip
    decode_start: int  # in ``mp4``
    stride: int
    start_s: float  # video window start, seconds into the clip
    audio_start: int  # samples into the clip, at the training rate

    @classmethod
    def plan(
        cls,
        cfg: DataConfig,
        position: int,
        key: str,
        shard: str,
        members: dict[str, bytes],
        rng: np.random.Generator,
    ) -> _Sample:
        meta = SampleMeta.from_json(members["json"], f"{key}.json in {shard}")
        duration, clip_fps = meta.duration_s, float(meta.fps)
        stride = max(1, round(clip_fps / cfg.fps))
        clip_frames = max(1, math.floor(duration * clip_fps + 1e-6))
        start_frame = int(rng.integers(max(1, clip_frames - cfg.frames * stride + 1)))
        start_s = start_frame / clip_fps
        audio_s = start_s + (cfg.frames * stride / clip_fps - cfg.audio_seconds) / 2.0
        audio_s = min(max(audio_s, 0.0), max(duration - cfg.audio_seconds, 0.0))
        mp4, decode_start = trim_window(members["mp4"], start_frame, cfg.frames, stride, clip_fps)
        return cls(
            position=position,
            key=key,
            shard=shard,
            meta=meta,
            rng=rng,
            flac=members["flac"],
            mp4=mp4,
            start_frame=start_frame,
            decode_start=decode_start,
            stride=stride,
            start_s=start_s,
            audio_start=round(audio_s * cfg.sample_rate),
        )

    @property
    def size(self) -> tuple[int, int]:
        """Equirect (width, height) in pixels."""
        return self.meta.video.width, self.meta.video.height


def _objects(objects: Sequence[DetectedObject]) -> np.ndarray:
    """Object directions ``[M, 2]`` (azimuth, elevation) in radians of a sample's detected objects
    (degrees in its JSON)."""
    directions = [o.direction for o in objects]
    return np.radians(np.asarray(directions, dtype=np.float64).reshape(-1, 2))


def _labels(labels: list[list[float]] | None) -> np.ndarray:
    """Directions ``[M, 2]`` (azimuth, elevation) in radians of the labelled sound events of a sample
    (its JSON's rows ``[frame, class, source, az°, el°, …]``): one per labelled source (class, source
    index), where it is at the middle of its frames in the clip; ``[0, 2]`` for an unlabelled clip."""
    rows: dict[tuple[int, int], list[list[float]]] = {}
    for row in labels or []:
        rows.setdefault((int(row[1]), int(row[2])), []).append(row)
    directions = [track[len(track) // 2][3:5] for track in rows.values()]
    return np.radians(np.asarray(directions, dtype=np.float64).reshape(-1, 2))


class ClipStream(IterableDataset):
    """Positions ``start + w + i·workers`` of a plan, prepared in loader worker w, one item each.

    Items are :class:`dataloading.batch.Clip` or :class:`Skipped`. On an epoch plan the stream never ends
    (positions past the rank's share supply substitutes) and the loader stops pulling when its batches are
    done; on a :class:`dataloading.shards.CompletePlan` it ends after the plan's last sample.
    With ``crops`` the worker decodes the frame window and makes the K crops (the CPU path); without, it
    hands on the encoded video for the GPU decoder (or for nobody: statistics need only the audio).
    """

    def __init__(
        self,
        cfg: DataConfig,
        plan: EpochPlan | CompletePlan,
        start: int,
        storage: StorageConfig | None,
        crops: bool,
        augment: bool,
    ) -> None:
        self.cfg, self.plan, self.start, self.storage = cfg, plan, start, storage
        self.crops, self.augment = crops, augment
        # Built in each worker on first use and kept for its life (a DALI pipeline takes a while).
        self._decoder: SampleDecoder | None = None
        self._shard_reader: tuple[tuple[str, ...], ShardReader] | None = None

    def __iter__(self) -> Iterator[Clip | Skipped]:
        yield from self._items(self.plan, self.start)

    def _items(self, plan: EpochPlan | CompletePlan, start: int) -> Iterator[Clip | Skipped]:
        """This worker's items of ``plan`` from stream position ``start`` on."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            torch.set_num_threads(1)  # the workers share the cores with each other and the trainer
        reader = self._reader(plan)
        end = len(plan) if isinstance(plan, CompletePlan) else None
        position = start + worker
        while end is None or position < end:
            positions = range(position, position + _GROUP * workers, workers)
            yield from self._prepare(plan, [p for p in positions if end is None or p < end], reader)
            position += _GROUP * workers

    def _sample_decoder(self) -> SampleDecoder:
        if self._decoder is None:
            self._decoder = SampleDecoder(
                self.cfg.sample_rate, self.cfg.frames, video=self.crops, max_batch=_GROUP
            )
        return self._decoder

    def _reader(self, plan: EpochPlan | CompletePlan) -> ShardReader:
        """A reader of the plan's shards, kept while the shards stay the same (every epoch of a run)."""
        urls = tuple(shard.url for shard in plan.shards)
        if self._shard_reader is None or self._shard_reader[0] != urls:
            self._shard_reader = (urls, ShardReader(plan.shards, self.storage))
        return self._shard_reader[1]

    def _prepare(
        self, plan: EpochPlan | CompletePlan, positions: list[int], reader: ShardReader
    ) -> list[Clip | Skipped]:
        """One item per position: read and plan each sample, decode them as one DALI batch, finish each."""
        items: dict[int, Clip | Skipped] = {}
        samples = []
        for position in positions:
            item = self._read(plan, position, reader)
            if isinstance(item, Skipped):
                items[position] = item
            else:
                samples.append(item)
        length = round(self.cfg.audio_seconds * self.cfg.sample_rate)
        video = self.crops
        decoded = self._sample_decoder().decode(
            [s.flac for s in samples],
            [(s.audio_start, length) for s in samples],
            [s.mp4 for s in samples] if video else [],
            [(s.decode_start, s.stride) for s in samples] if video else [],
        ) if samples else []  # fmt: skip
        for sample, result in zip(samples, decoded, strict=True):
            if isinstance(result, Exception):
                reason = str(result).strip().splitlines()[-1][:200]
                items[sample.position] = Skipped(
                    sample.position, sample.key, sample.shard, f"decode failed: {reason}"
                )
            else:
                items[sample.position] = self._finish(sample, *result)
        return [items[p] for p in positions]

    def _read(self, plan: EpochPlan | CompletePlan, position: int, reader: ShardReader) -> _Sample | Skipped:
        ref = plan[position]
        shard = plan.shards[ref.shard].url
        key = "?"
        try:
            key, members = reader.read(ref)
            return _Sample.plan(self.cfg, position, key, shard, members, plan.sample_rng(position))
        except BadSample as exc:
            return Skipped(position, exc.key, shard, str(exc), exc.truncated)
        except av.FFmpegError as exc:
            return Skipped(position, key, shard, f"unreadable video: {exc}")
        except SchemaError as exc:  # its own message names the sample, the versions and the fix
            return Skipped(position, key, shard, str(exc))
        except (KeyError, TypeError, ValueError) as exc:  # JSON missing, malformed or lacking fields
            return Skipped(position, key, shard, f"bad sample: {exc!r}")

    def _finish(self, sample: _Sample, audio: np.ndarray, frames: np.ndarray | None) -> Clip:
        """Viewpoints and fields of view; on the CPU path also the K crops and the augmentations."""
        cfg, rng = self.cfg, sample.rng
        fov = torch.from_numpy(rng.uniform(*np.radians(cfg.fov_deg), cfg.viewpoints)).float()
        azimuth, elevation = (
            torch.from_numpy(angles).float()
            for angles in sample_viewpoints(
                cfg.viewpoint_sampler,
                Cues(objects=_objects(sample.meta.objects), foa=audio, labels=_labels(sample.meta.labels)),
                cfg.viewpoints,
                rng,
                math.radians(cfg.max_elevation_deg),
                math.radians(cfg.min_separation_deg),
            )
        )
        clip = Clip(
            key=sample.key,
            shard=sample.shard,
            position=sample.position,
            source=sample.meta.source,
            foa=torch.from_numpy(audio),
            azimuth=azimuth,
            elevation=elevation,
            fov=fov,
            start_s=sample.start_s,
        )
        if frames is None:  # GPU path: crops and augmentations happen on the device
            clip.mp4, clip.frame_window, clip.size = (
                sample.mp4,
                (sample.decode_start, sample.stride),
                sample.size,
            )
            return self._offset(clip, rng)
        views = crop_views(frames, azimuth, elevation, fov, cfg.crop_size)[None]
        if self.augment:
            generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
            views, foa, azimuth, flipped = augment_views(
                views, clip.foa[None], azimuth[None], cfg.flip_prob, generator
            )
            clip.foa, clip.azimuth, clip.flipped = foa[0], azimuth[0], bool(flipped[0])
        clip.crops = to_uint8(views[0])
        return self._offset(clip, rng)

    def _offset(self, clip: Clip, rng: np.random.Generator) -> Clip:
        """The negative control's yaw between each view's audio and video (drawn last, so every other
        draw of the sample is what it would be without it)."""
        low, high = self.cfg.audio_yaw_offset_deg
        if low or high:
            clip.audio_offset = torch.from_numpy(
                np.radians(rng.uniform(low, high, self.cfg.viewpoints))
            ).float()
        return clip


class LiveClipStream(ClipStream):
    """A :class:`ClipStream` for workers that live as long as the loader: each iteration's (plan, start)
    reaches every worker through its own queue, so one pool of processes (and their DALI pipelines)
    serves every epoch and resume. Each iteration of the DataLoader takes exactly one job per worker
    (every worker is asked for items as soon as an iteration begins), in the order they were submitted.
    """

    def __init__(
        self, cfg: DataConfig, storage: StorageConfig | None, crops: bool, augment: bool, context: Any
    ) -> None:
        super().__init__(cfg, None, 0, storage, crops, augment)  # type: ignore[arg-type]
        self.jobs = [context.Queue() for _ in range(max(cfg.workers, 1))]

    def submit(self, plan: EpochPlan, start: int) -> None:
        """The next iteration reads ``plan`` from stream position ``start``."""
        for queue in self.jobs:
            queue.put((plan, start))

    def __iter__(self) -> Iterator[Clip | Skipped]:
        info = get_worker_info()
        plan, start = self.jobs[info.id if info else 0].get()
        yield from self._items(plan, start)


def identity(item: Any) -> Any:
    """The DataLoader collate function for items that are already whole (clips, skips)."""
    return item


def worker_signals(_: int) -> None:
    """A loader worker's ``worker_init_fn``: it ends at a SIGTERM from its rank, and only then.

    A scheduler that terminates every process of a job (as Slurm does) signals the workers too. By
    torch's own handling a worker dies of it, and the rank's SIGCHLD handler then raises at once, in
    the middle of the step it was to finish before its preemption checkpoint (see
    :mod:`trainer.preemption`). A forked worker would also hand its signals to the rank's watcher
    through the inherited wakeup pipe, as if they were the rank's own. So the worker takes SIGTERM
    off the table (blocked, with no pipe) and a thread waits for it: from the rank (torch's
    ``terminate`` when the workers are shut down) it exits as torch's handler would; from anyone else
    it goes on, and the rank ends it when its loader closes.
    """
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit it
    rank = os.getppid()

    def wait() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != rank:
            pass
        os._exit(0)

    threading.Thread(target=wait, name="sigterm-from-rank", daemon=True).start()


def complete_pass(
    cfg: DataConfig, plan: CompletePlan, storage: StorageConfig | None, crops: bool, what: str
) -> Iterator[Clip]:
    """Every readable clip of ``plan`` once, in plan order, without augmentation, prepared by
    ``cfg.workers`` loader workers (with ``crops``: decoded and cropped). A bad sample is logged, naming
    ``what`` is being read, and left out; a progress bar shows the pass."""
    stream = ClipStream(cfg, plan, 0, storage, crops=crops, augment=False)
    items = DataLoader(
        stream, batch_size=None, num_workers=cfg.workers, collate_fn=identity, worker_init_fn=worker_signals
    )
    clips = []
    for item in tqdm(items, total=len(plan), desc=what, unit="clip", leave=False):
        if isinstance(item, Skipped):
            log.warning("%s: skipping sample %s in shard %s: %s", what, item.key, item.shard, item.reason)
        else:
            clips.append(item)
    # Workers that run out at different times interleave the last items: restore the plan's order.
    yield from sorted(clips, key=lambda c: c.position)


class Loader:
    """One rank's resumable stream of :class:`dataloading.batch.Batch` (see the module docstring).

    ``len(loader)`` batches per whole epoch on every rank: one pass over the dataset (samples // global
    batch), or ``batches_per_epoch`` when > 0 (e.g. for resampled training; past the rank's share it
    substitutes). ``batches_left()`` says how many the current epoch still has (after a resume on another
    world size, what the samples not consumed yet fill). ``counters`` (``samples``, ``skipped``,
    ``truncated_shards``) accumulate across epochs and resumes; a resume on another world size hands old
    rank r's counters to new rank r mod world_size, so their sum over the ranks is kept.
    """

    def __init__(
        self,
        cfg: DataConfig,
        rank: int = 0,
        world_size: int = 1,
        storage: StorageConfig | None = None,
        device: torch.device | str = "cpu",
        batches_per_epoch: int = 0,
        stats: FeatureStats | None = None,
        augment: bool = True,
    ) -> None:
        self.cfg, self.rank, self.world_size, self.storage = cfg, rank, world_size, storage
        self.device = torch.device(device)
        self.shards = list_shards(cfg.url, storage)
        self.builder = BatchBuilder(cfg, self.device, stats)
        self.stats = stats
        self.augment = augment
        self._batches_override = batches_per_epoch
        self.epoch, self.batch, self.position = 0, 0, 0
        # The epoch's current segment: what earlier segments consumed, and the batch it started at.
        self._consumed: list[list[int]] = []
        self._segment = 0
        self.counters = {"samples": 0, "skipped": 0, "truncated_shards": 0}
        self._logged: set[tuple[str, str]] = set()
        self._gpu_decoder: GpuCropDecoder | None = None
        self._bad_run = 0
        self._plan = self._make_plan()
        self._epoch_batches = self._plan.batches  # a whole epoch's, on this world size
        self._stream, self._workers = self._worker_pool()

    def _worker_pool(self) -> tuple[LiveClipStream, DataLoader]:
        """The loader workers, started at the first iteration and kept to the end (spawned with a GPU:
        CUDA does not survive a fork)."""
        workers, gpu = self.cfg.workers, self.device.type == "cuda"
        context = mp.get_context("spawn" if gpu and workers else None)
        stream = LiveClipStream(self.cfg, self.storage, not gpu, self.augment, context)
        pool = DataLoader(
            stream,
            batch_size=None,
            num_workers=workers,
            collate_fn=identity,
            worker_init_fn=worker_signals,
            # Items are single clips: let the workers run a whole batch ahead of the trainer.
            prefetch_factor=max(2, math.ceil(self.cfg.batch_size / workers)) if workers else None,
            multiprocessing_context=context if workers else None,
            persistent_workers=workers > 0,
        )
        return stream, pool

    def _make_plan(self, world_size: int | None = None) -> EpochPlan:
        """This rank's plan for the current segment; with ``world_size``, rank 0's of a segment of that
        many ranks (to work out what a saving run of that size consumed)."""
        cfg = self.cfg
        return EpochPlan(
            self.shards,
            cfg.batch_size,
            0 if world_size else self.rank,
            world_size or self.world_size,
            cfg.seed,
            self.epoch,
            cfg.resampled,
            self._consumed,
            self._segment,
        )

    def __len__(self) -> int:
        return self._batches_override or self._epoch_batches

    def batches_left(self) -> int:
        """Batches that iterating still yields in the current epoch (the same on every rank)."""
        if self._batches_override or self.cfg.resampled:
            return max(len(self) - self.batch, 0)
        return max(self._plan.batches - (self.batch - self._segment), 0)

    def set_epoch(self, epoch: int) -> None:
        """Position the loader at the start of ``epoch`` (no-op if already inside it)."""
        if epoch != self.epoch:
            self.epoch, self.batch, self.position = epoch, 0, 0
            self._consumed, self._segment = [], 0
            self._plan = self._make_plan()

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out (plain JSON types), and the counters."""
        return {
            "epoch": self.epoch,
            "batch": self.batch,  # global steps of the epoch so far: the same on every rank
            "position": self.position,  # this rank's, within the segment
            "segment": {"consumed": self._consumed, "batch": self._segment},
            "seed": self.cfg.seed,
            "samples": self._plan.order.total,
            "counters": dict(self.counters),
        }

    def load_state_dict(self, states: Sequence[dict[str, Any]]) -> None:
        """Resume from the states of every rank of the saving run, in rank order (see the class doc)."""
        first = states[0]
        if len({(s["epoch"], s["batch"]) for s in states}) != 1:
            raise ValueError("the saved loader states disagree on the epoch and batch: not one checkpoint")
        if (first["seed"], first["samples"]) != (self.cfg.seed, self._plan.order.total):
            raise ValueError(
                f"the checkpoint's loader position is for data.seed {first['seed']} and {first['samples']} "
                f"samples, this run has data.seed {self.cfg.seed} and {self._plan.order.total} samples at "
                f"{self.cfg.url!r}: resume with the same data, or start a new run"
            )
        self.epoch, self.batch = int(first["epoch"]), int(first["batch"])
        self._consumed, self._segment = first["segment"]["consumed"], int(first["segment"]["batch"])
        if len(states) == self.world_size:  # continue this rank's own stream
            own = states[self.rank]
            self.position, self.counters = int(own["position"]), dict(own["counters"])
        else:  # a new segment: the samples the saving ranks had not consumed, split among these
            saved = self._make_plan(world_size=len(states))
            self._consumed = [list(i) for i in saved.consumed_after([int(s["position"]) for s in states])]
            self._segment, self.position = self.batch, 0
            mine = [s["counters"] for r, s in enumerate(states) if r % self.world_size == self.rank]
            self.counters = {k: sum(c[k] for c in mine) for k in self.counters}
        self._plan = self._make_plan()

    def __iter__(self) -> Iterator[Batch]:
        if self.batches_left() == 0:
            return
        gpu = self.device.type == "cuda"
        self._stream.submit(self._plan, self.position)
        items = iter(self._workers)
        self._bad_run = 0  # bad positions since the last readable one
        while self.batches_left() > 0:
            clips: list[Clip] = []
            crops: list[torch.Tensor] = []
            while len(clips) < self.cfg.batch_size:
                pulled = self._pull(items, self.cfg.batch_size - len(clips))
                for clip, video in zip(pulled, self._crops(pulled), strict=True):
                    if isinstance(video, Skipped):
                        self._skip(video)
                    else:
                        clips.append(clip)
                        crops.append(video)
            augment = self._device_augment_generator(gpu, clips[0].position)
            batch = self.builder(clips, torch.stack(crops), augment)
            self.batch += 1
            self.counters["samples"] += len(clips)
            yield batch

    def _device_augment_generator(self, gpu: bool, first: int) -> torch.Generator | None:
        """For GPU decoding, the generator of this batch's augmentations, seeded by the identity of the
        sample at position ``first`` (the batch's first); None when the workers augmented each clip already
        (CPU path) or augmentation is off."""
        if not (gpu and self.augment):
            return None
        return torch.Generator().manual_seed(
            int(self._plan.sample_rng(first, seeds.BATCH_AUGMENT).integers(2**62))
        )

    def _pull(self, items: Iterator[Clip | Skipped], count: int) -> list[Clip]:
        """The next ``count`` readable clips of the stream, skipping (and counting) bad positions."""
        clips: list[Clip] = []
        while len(clips) < count:
            item = next(items)
            self.position += 1
            if isinstance(item, Skipped):
                self._skip(item)
            else:
                self._bad_run = 0
                clips.append(item)
        return clips

    def _crops(self, clips: list[Clip]) -> list[torch.Tensor | Skipped]:
        """Each clip's uint8 ``[K, 3, T, h, w]`` crops: made by the worker, or decoded here on the GPU."""
        if not clips or clips[0].crops is not None:
            return [c.crops for c in clips]
        cfg = self.cfg
        if self._gpu_decoder is None:
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._gpu_decoder = GpuCropDecoder(cfg.frames, cfg.batch_size, index)
        maps = [stacked_remap_maps(c.azimuth, c.elevation, c.fov, cfg.crop_size, c.size) for c in clips]
        decoded = self._gpu_decoder.decode([c.mp4 for c in clips], [c.frame_window for c in clips], maps)
        return [
            Skipped(c.position, c.key, c.shard, f"decode failed: {str(d).strip().splitlines()[-1][:200]}")
            if isinstance(d, Exception)
            else unstack_remapped(d, cfg.viewpoints)
            for c, d in zip(clips, decoded, strict=True)
        ]

    def _skip(self, item: Skipped) -> None:
        """Count and log (once per sample, or once per truncated shard) a bad sample; fail if all are bad."""
        self.counters["skipped"] += 1
        if item.truncated:
            if (item.shard, "") not in self._logged:
                self._logged.add((item.shard, ""))
                self.counters["truncated_shards"] += 1
                log.warning(
                    "truncated shard %s: skipping sample %s and the rest (%s)",
                    item.shard,
                    item.key,
                    item.reason,
                )
        elif (item.shard, item.key) not in self._logged:
            self._logged.add((item.shard, item.key))
            log.warning("skipping sample %s in shard %s: %s", item.key, item.shard, item.reason)
        self._bad_run += 1
        # Fail fast when nothing at all can be read, and never loop forever over a rank's bad share.
        if (self._bad_run >= min(self._plan.quota, 16) and self.counters["samples"] == 0) or (
            self._bad_run >= self._plan.quota
        ):
            raise RuntimeError(
                f"dataset {self.cfg.url!r} looks unreadable: {self._bad_run} samples in a row failed on rank "
                f"{self.rank}, the last {item.key!r} in shard {item.shard}: {item.reason}"
            )


def build_loader(
    cfg: DataConfig,
    rank: int = 0,
    world_size: int = 1,
    epoch: int = 0,
    storage: StorageConfig | None = None,
    device: torch.device | str | None = None,
    **kwargs: Any,
) -> Loader:
    """A :class:`Loader` for ``cfg.url`` positioned at the start of ``epoch``.

    ``device`` defaults to the current CUDA device when there is one (DALI ``mixed`` decode and
    ``remap`` crops), else the CPU. Other keyword arguments go to :class:`Loader`.
    """
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    loader = Loader(cfg, rank, world_size, storage, device, **kwargs)
    loader.set_epoch(epoch)
    return loader
