"""The replay cache: the training loader's output for ``data.cache_passes`` epochs, made once, kept in a
local file and served as batches from memory by :class:`ReplaySource`.

On a small machine the loader costs the trainer its cores: a worker decodes video and makes the crops,
the main process computes every batch's features between optimizer steps. With ``data.cache_passes`` N
the real loader (:class:`dataloading.loader.Loader`) runs N epochs over the dataset once, and every clip
keeps the N sets of K viewpoints (window, viewpoints, crops, augmentation, features) it drew in them.
Every training epoch then shows each clip with one of its sets; the step gets the whole machine.

**What a cache holds.** Per clip (its shard and key, and its source video) and pass: the K crops as uint8,
the features as float16, the directions and fields of view as float32, the flip and the window start.
On the CPU path the crops are the worker's uint8 crops themselves (the loader's ``video`` is that
divided by 255), so video is exact; with GPU decoding (augmented in float on the device) rounding to
uint8 moves a pixel by at most 1/510. Float16 keeps 11 significant bits: a standardised feature of
magnitude below 1 moves by at most 2⁻¹², one of magnitude x by at most x·2⁻¹¹.

The cache is built with a loader of one clip per batch, so every clip is in every pass (a loader epoch
of B-clip batches leaves out the last partial batch; a clip's draws do not depend on the batch size,
they are seeded by its identity in the epoch: :mod:`dataloading.epoch`). With GPU decoding the device
augmentations of a one-clip batch are seeded by that clip, not by the first clip of a B-clip batch.

**The file** ``CACHE_DIR/NAME-KEY.avsa-replay`` is named by a hash of everything its contents depend on
(:func:`cache_key`): the dataset (URL and checksum), the data settings that change a batch, the seed,
the number of passes, the normalisation statistics and the decode path. It is written under a
temporary name and renamed, so two runs building the same cache at once leave one whole file. It is
memory-mapped: ranks of one machine share its pages (the kernel is asked to read it ahead).

**Epochs** (:class:`ReplaySource`): epoch e orders the clips by a permutation seeded by (seed, e) and
shows each clip with a set drawn by (seed, e) for that clip among the sets it has. Global step s takes
the next W·B samples of that order, rank r the r-th B of them (so rank r takes every W-th batch of B of
the epoch's order); epochs needing more samples than clips append further permutations (laps). Every
rank has the same number of batches (``train.steps_per_epoch``, else one pass), and samples that cannot
fill a last global batch are left out. The position is the number of samples the epoch has consumed,
the same on every rank, so a resume on any world size goes on with exactly the samples not consumed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import mmap
import os
import struct
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from dataloading import seeds
from dataloading.batch import Batch, BatchBuilder, Clip, to_uint8
from dataloading.config import DataConfig, StorageConfig
from dataloading.feature_stats import FeatureStats
from dataloading.features import FeatureExtractor
from dataloading.shards import list_shards, read_manifest
from dataloading.storage import filesystem

log = logging.getLogger(__name__)

FORMAT = 1  # of the file; part of the key, so a new format never reads an old file
MAGIC = b"AVSA-RPL"
SUFFIX = ".avsa-replay"
DEFAULT_DIR = "~/.cache/avsa/replay"
_ALIGN = 4096  # array offsets in the file: page aligned
# DataConfig fields that do not change what a cache holds (the batch size only groups the clips).
_NOT_IN_KEY = ("workers", "batch_size", "cache_passes", "cache_dir")


# ----- the key ---------------------------------------------------------------------------------------
def canonical_url(url: str) -> str:
    """``url`` with a plain path made absolute, so one dataset has one name whatever the working folder."""
    return url if "://" in url else os.path.abspath(os.path.expanduser(url))


def dataset_checksum(url: str, storage: StorageConfig | None = None) -> str:
    """A hash of the dataset's contents as cheaply known: its manifest's shards (name, samples, bytes,
    sha256 of the tar) where it has a manifest, else each shard's name, sample count, DALI index bytes,
    tar size and modification stamp."""
    manifest = read_manifest(url, storage)
    if manifest is not None:
        parts: list[Any] = [
            [name, entry.samples, entry.bytes, entry.sha256]
            for name, entry in sorted(manifest.shards.items())
        ]
    else:
        parts = []
        for shard in list_shards(url, storage):
            fs, path = filesystem(shard.url, storage)
            index_fs, index_path = filesystem(shard.index_url, storage)
            info = fs.info(path)
            stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified")
            index = hashlib.sha256(index_fs.cat_file(index_path)).hexdigest()
            parts.append([shard.url.rsplit("/", 1)[-1], shard.samples, index, info.get("size"), str(stamp)])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def cache_key(
    data: DataConfig,
    storage: StorageConfig | None = None,
    stats: FeatureStats | None = None,
    device: torch.device | str = "cpu",
) -> tuple[str, dict[str, Any]]:
    """(key, what it hashes): everything a cache's contents depend on.

    That is the dataset (URL, :func:`dataset_checksum`), the resolved data settings without those that
    do not change a batch (``workers``, ``batch_size``, the cache's own folder), ``data.seed`` and
    ``data.cache_passes`` among them, the feature extractor's settings (with its definition version),
    the normalisation statistics, the decode path (CPU or GPU: their augmentations are drawn
    differently) and the file format.
    """
    fields = {k: v for k, v in dataclasses.asdict(data).items() if k not in _NOT_IN_KEY}
    fields["url"] = canonical_url(data.url)
    described = {
        "format": FORMAT,
        "data": fields,
        "cache_passes": data.cache_passes,
        "dataset": dataset_checksum(data.url, storage),
        "features": FeatureExtractor.from_config(data).settings,
        "stats": None if stats is None else hashlib.sha256(stats.to_json()).hexdigest(),
        "decode": torch.device(device).type,
    }
    text = json.dumps(described, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:24], described


def cache_path(data: DataConfig, key: str) -> str:
    """The cache file of ``key`` in ``data.cache_dir`` (default ``~/.cache/avsa/replay``)."""
    folder = os.path.expanduser(data.cache_dir or DEFAULT_DIR)
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in canonical_url(data.url).rstrip("/")[-40:])
    return os.path.join(folder, f"{name.strip('_') or 'dataset'}-{key}{SUFFIX}")


# ----- the file --------------------------------------------------------------------------------------
def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


class _Writer:
    """A cache file under a temporary name beside ``path``: arrays ``[rows, passes, ...]`` at page-aligned
    offsets (zeros until written), then the JSON header, its length and the magic; renamed at the end."""

    def __init__(
        self, path: str, rows: int, passes: int, fields: dict[str, tuple[np.dtype, tuple[int, ...]]]
    ):
        self.path, self.tmp = path, f"{path}.tmp-{uuid.uuid4().hex}"
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.layout: dict[str, dict[str, Any]] = {}
        offset = _ALIGN
        for name, (dtype, shape) in fields.items():
            full = (rows, passes, *shape)
            self.layout[name] = {"dtype": np.dtype(dtype).str, "shape": list(full), "offset": offset}
            offset = _aligned(offset + int(np.prod(full)) * np.dtype(dtype).itemsize)
        self.end = offset
        with open(self.tmp, "wb") as fh:
            fh.write(MAGIC)
            fh.truncate(self.end)  # sparse: rows never written take no disk
        self._map = np.memmap(self.tmp, np.uint8, "r+", shape=(self.end,))
        self.arrays = {
            name: np.ndarray(tuple(f["shape"]), np.dtype(f["dtype"]), buffer=self._map, offset=f["offset"])
            for name, f in self.layout.items()
        }

    def finish(self, header: dict[str, Any]) -> None:
        self._map.flush()
        self.arrays.clear()
        del self._map
        text = json.dumps(header | {"layout": self.layout}).encode()
        with open(self.tmp, "r+b") as fh:
            fh.seek(self.end)
            fh.write(text + struct.pack("<Q", len(text)) + MAGIC)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(self.tmp, self.path)  # a concurrent build of the same key leaves the same bytes

    def abort(self) -> None:
        self.arrays.clear()
        with contextlib.suppress(AttributeError):
            del self._map
        with contextlib.suppress(OSError):
            os.remove(self.tmp)


class ReplayCache:
    """A cache file, memory-mapped: per clip (row) and pass ``video`` uint8 ``[K, 3, T, H, W]``, ``audio``
    float16 ``[K, C, F, T']``, ``directions`` float32 ``[K, 2]``, ``fov`` float32 ``[K]``, ``start_s``
    float64, ``flipped`` and ``have`` (whether the clip was read in that pass) uint8; ``keys``,
    ``shards`` and ``sources`` per row; ``stats`` the statistics its features were standardised with."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as fh:
            fh.seek(-16, os.SEEK_END)
            tail = fh.read(16)
            if tail[8:] != MAGIC:
                raise ValueError(f"{path} is not a replay cache (or was cut short): delete it to rebuild")
            (length,) = struct.unpack("<Q", tail[:8])
            fh.seek(-16 - length, os.SEEK_END)
            header = json.loads(fh.read(length))
        if header.get("format") != FORMAT:
            raise ValueError(
                f"{path} has replay cache format {header.get('format')}, this code reads {FORMAT}"
            )
        self.header, self.nbytes = header, os.path.getsize(path)
        self.keys: list[str] = header["keys"]
        self.shards: list[str] = header["shards"]
        self.sources: list[str] = header["sources"]
        self.passes: int = header["passes"]
        self.stats = None if header["stats"] is None else FeatureStats.from_json(header["stats"])
        self._map = np.memmap(path, np.uint8, "r")
        with contextlib.suppress(AttributeError, OSError, ValueError):  # a hint: read ahead, keep cached
            self._map._mmap.madvise(mmap.MADV_WILLNEED)  # type: ignore[union-attr]
        clips = len(self.keys)
        arrays = {
            name: np.ndarray(tuple(f["shape"]), np.dtype(f["dtype"]), buffer=self._map, offset=f["offset"])[
                :clips
            ]
            for name, f in header["layout"].items()
        }
        self.video, self.audio = arrays["video"], arrays["audio"]
        self.directions, self.fov = arrays["directions"], arrays["fov"]
        self.start_s, self.flipped, self.have = arrays["start_s"], arrays["flipped"], arrays["have"]

    def __len__(self) -> int:
        return len(self.keys)


# ----- building --------------------------------------------------------------------------------------
class _Capture:
    """Stands in for a loader's :class:`BatchBuilder` to see each batch's clips and uint8 crops."""

    def __init__(self, builder: BatchBuilder) -> None:
        self.builder = builder
        self.clips: list[Clip] = []
        self.crops: Tensor | None = None

    def __call__(self, clips: list[Clip], crops: Tensor, generator: torch.Generator | None = None) -> Batch:
        # Without a generator the crops were augmented by the worker and the batch's video is crops / 255.
        self.clips, self.crops = clips, (crops if generator is None else None)
        return self.builder(clips, crops, generator)


def build_cache(
    data: DataConfig,
    path: str,
    storage: StorageConfig | None = None,
    stats: FeatureStats | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> ReplayCache:
    """Run the loader over ``data.cache_passes`` epochs (0, 1, …) of ``data.url`` and write what it yields
    per clip to ``path`` (see the module docstring); with ``progress`` a progress bar and a log line per
    pass, with the time left. Bad samples are logged and left out, as the loader does."""
    from dataloading.loader import Loader  # imports DALI

    passes = data.cache_passes
    if passes < 1:
        raise ValueError(f"data.cache_passes must be at least 1 to build a replay cache; got {passes}")
    one = dataclasses.replace(data, batch_size=1, resampled=False)  # every clip in every pass
    loader = Loader(one, 0, 1, storage, device, stats=stats, augment=True)
    capture = _Capture(loader.builder)
    loader.builder = capture  # type: ignore[assignment]
    rows = sum(s.samples for s in loader.shards)
    per_pass = len(loader)
    started = time.perf_counter()
    log.info("building the replay cache of %s: %d clips x %d passes -> %s", data.url, per_pass, passes, path)
    bar = tqdm(
        total=passes * per_pass, desc="replay cache", unit="clip", disable=not progress, mininterval=1.0
    )
    writer: _Writer | None = None
    ids: dict[tuple[str, str], int] = {}
    sources: list[str] = []
    try:
        for p in range(passes):
            loader.set_epoch(p)
            for batch in loader:
                (clip,) = capture.clips
                row = ids.setdefault((clip.shard, clip.key), len(ids))
                if row == len(sources):
                    sources.append(clip.source)
                if writer is None:
                    writer = _Writer(path, rows, passes, _fields(batch))
                _store(writer.arrays, row, p, batch, capture.crops)
                bar.update(1)
            if progress:
                spent = time.perf_counter() - started
                log.info(
                    "replay cache: pass %d/%d done, %.0f s, about %.0f s left",
                    *(p + 1, passes, spent, spent / (p + 1) * (passes - p - 1)),
                )
        assert writer is not None
        header = {
            "format": FORMAT,
            "passes": passes,
            "keys": [key for _, key in ids],
            "shards": [shard for shard, _ in ids],
            "sources": sources,
            "stats": None if stats is None else stats.to_json().decode(),
            "url": data.url,
            "seed": data.seed,
            "skipped": loader.counters["skipped"],
        }
        writer.finish(header)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
        del loader, capture
        gc.collect()  # the loader's worker processes end with it
    cache = ReplayCache(path)
    log.info(
        "replay cache built in %.0f s: %d clips x %d passes, %.2f GB",
        time.perf_counter() - started,
        len(cache),
        passes,
        cache.nbytes / 1e9,
    )
    return cache


def _fields(batch: Batch) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """What a cache stores per clip and pass, from a one-clip batch of the loader."""
    k = batch.video.shape[1]
    return {
        "video": (np.dtype(np.uint8), tuple(batch.video.shape[1:])),
        "audio": (np.dtype(np.float16), tuple(batch.audio.shape[1:])),
        "directions": (np.dtype(np.float32), (k, 2)),
        "fov": (np.dtype(np.float32), (k,)),
        "start_s": (np.dtype(np.float64), ()),
        "flipped": (np.dtype(np.uint8), ()),
        "have": (np.dtype(np.uint8), ()),
    }


def _store(arrays: dict[str, np.ndarray], row: int, p: int, batch: Batch, crops: Tensor | None) -> None:
    """Clip 0 of a one-clip ``batch`` as set ``p`` of ``row`` (a clip met again in one pass, as the
    loader's substitute for a bad sample, keeps its first set)."""
    if arrays["have"][row, p]:
        return
    video = crops[0] if crops is not None else to_uint8(batch.video[0])
    audio = batch.audio[0].cpu().numpy().astype(np.float16)
    if not np.isfinite(audio).all():
        raise ValueError(
            f"clip {batch.meta['key'][0]}: its features do not fit float16 (|x| > 65504); are they "
            "standardised?"
        )
    arrays["video"][row, p] = video.cpu().numpy()
    arrays["audio"][row, p] = audio
    arrays["directions"][row, p] = batch.directions[0].cpu().numpy()
    arrays["fov"][row, p] = batch.meta["fov"][0].numpy()
    arrays["start_s"][row, p] = batch.meta["start_s"][0]
    arrays["flipped"][row, p] = bool(batch.meta["flipped"][0])
    arrays["have"][row, p] = 1


# ----- serving ---------------------------------------------------------------------------------------
class ReplaySource:
    """One rank's epochs of batches from a :class:`ReplayCache`; a :class:`dataloading.batch.BatchSource`.

    See the module docstring for the order. ``len(source)`` batches per whole epoch on this world size:
    ``batches_per_epoch`` when > 0, else the global batches one pass over the clips fills. The state
    is global (epoch, samples consumed, samples the epoch has), so every rank saves the same one.
    Batches are :class:`Batch` on ``device`` as the loader makes them: video float32 in [0, 1], audio
    float32, directions, meta ``key``, ``shard``, ``start_s``, ``fov`` and ``flipped``.
    """

    def __init__(
        self,
        cache: ReplayCache,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        device: torch.device | str = "cpu",
        batches_per_epoch: int = 0,
        stats: FeatureStats | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.cache, self.batch_size, self.rank, self.world_size = cache, batch_size, rank, world_size
        self.seed, self.device = seed, torch.device(device)
        self.stats = stats if stats is not None else cache.stats
        # Clip i is the i-th in (shard, key) order, whatever order the build met them in.
        self._rows = np.array(sorted(range(len(cache)), key=lambda r: (cache.shards[r], cache.keys[r])))
        have = cache.have[self._rows].astype(bool)  # [clips, passes]
        if not have.any(1).all():
            raise ValueError(f"{cache.path}: some clips have no cached set")
        self._have_cumsum = have.cumsum(1)
        self.clips = len(self._rows)
        self._global = batch_size * world_size
        self._batches = batches_per_epoch or self.clips // self._global
        if self._batches <= 0:
            raise ValueError(
                f"{self.clips} cached clips cannot fill one batch of {batch_size} on each of {world_size} "
                "ranks"
            )
        self.epoch, self.consumed = 0, 0
        self.epoch_samples = self._batches * self._global
        self._laps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self._batches

    def batches_left(self) -> int:
        return max((self.epoch_samples - self.consumed) // self._global, 0)

    def set_epoch(self, epoch: int) -> None:
        """Position the source at the start of ``epoch`` (no-op if already inside it)."""
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0
            self.epoch_samples = self._batches * self._global

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out: the same on every rank (plain JSON types)."""
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,  # samples of the epoch's order handed out by all ranks together
            "epoch_samples": self.epoch_samples,
            "seed": self.seed,
            "clips": self.clips,
            "cache": os.path.basename(self.cache.path),
        }

    def load_state_dict(self, states: Sequence[dict[str, Any]]) -> None:
        """Resume from the states of every rank of the saving run (any world size): the epoch goes on
        with the samples of its order not consumed yet, split among this run's ranks."""
        first = states[0]
        if "consumed" not in first:
            raise ValueError(
                "the checkpoint's data position is the shard loader's, not the replay cache's: resume with "
                "data.cache_passes 0, or start a new run"
            )
        if len({(s["epoch"], s["consumed"], s["epoch_samples"]) for s in states}) != 1:
            raise ValueError("the saved replay states disagree on the epoch and position: not one checkpoint")
        if (first["seed"], first["clips"]) != (self.seed, self.clips):
            raise ValueError(
                f"the checkpoint's replay position is for data.seed {first['seed']} and {first['clips']} "
                f"clips, this run has data.seed {self.seed} and {self.clips}: resume with the same data, or "
                "start a new run"
            )
        if first.get("cache") != os.path.basename(self.cache.path):
            log.warning(
                "resuming from a checkpoint of replay cache %s with %s", first.get("cache"), self.cache.path
            )
        self.epoch, self.consumed = int(first["epoch"]), int(first["consumed"])
        self.epoch_samples = int(first["epoch_samples"])

    def _lap(self, epoch: int, lap: int) -> tuple[np.ndarray, np.ndarray]:
        """(clip order, each clip's set) of the ``lap``-th pass over the clips in ``epoch``."""
        found = self._laps.get((epoch, lap))
        if found is None:
            if len(self._laps) >= 4:
                self._laps.clear()
            order = np.random.default_rng([self.seed, epoch, lap, seeds.REPLAY_ORDER]).permutation(self.clips)
            draw = np.random.default_rng([self.seed, epoch, lap, seeds.REPLAY_SET]).random(self.clips)
            counts = self._have_cumsum[:, -1]
            nth = np.minimum((draw * counts).astype(np.int64), counts - 1)  # which of the clip's sets
            sets = (self._have_cumsum > nth[:, None]).argmax(1)
            found = self._laps[(epoch, lap)] = (order, sets)
        return found

    def samples(self, epoch: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(cache rows, sets) of samples ``start … start + count − 1`` of ``epoch``'s order."""
        rows, sets = np.empty(count, np.int64), np.empty(count, np.int64)
        for i, g in enumerate(range(start, start + count)):
            lap, index = divmod(g, self.clips)
            order, chosen = self._lap(epoch, lap)
            clip = order[index]
            rows[i], sets[i] = self._rows[clip], chosen[clip]
        return rows, sets

    def __iter__(self) -> Iterator[Batch]:
        while self.batches_left() > 0:
            rows, sets = self.samples(
                self.epoch, self.consumed + self.rank * self.batch_size, self.batch_size
            )
            self.consumed += self._global
            yield self.batch(rows, sets)

    def batch(self, rows: np.ndarray, sets: np.ndarray) -> Batch:
        """The batch of the given cache rows, each with its set, on the device."""
        c, device = self.cache, self.device
        video = torch.from_numpy(c.video[rows, sets]).to(device, non_blocking=True).float().div_(255.0)
        audio = torch.from_numpy(c.audio[rows, sets]).to(device, non_blocking=True).float()
        return Batch(
            video=video,
            audio=audio,
            directions=torch.from_numpy(c.directions[rows, sets]).to(device),
            meta={
                "key": [c.keys[r] for r in rows],
                "shard": [c.shards[r] for r in rows],
                "start_s": [float(s) for s in c.start_s[rows, sets]],
                "fov": torch.from_numpy(c.fov[rows, sets]),
                "flipped": torch.from_numpy(c.flipped[rows, sets].astype(bool)),
            },
        )


# ----- the training entry ----------------------------------------------------------------------------
def replay_source(
    data: DataConfig,
    storage: StorageConfig | None,
    rank: int,
    world_size: int,
    device: torch.device | str,
    batches_per_epoch: int = 0,
    stats: FeatureStats | None = None,
) -> ReplaySource:
    """The :class:`ReplaySource` of ``data`` for this rank, its cache built first if missing.

    Rank 0 builds it (on a machine of its own, a job's other machines' first ranks, ``LOCAL_RANK`` 0,
    build theirs: the folder is local); the other ranks wait in a collective of the process group if
    one is up, then map the file. A failed build fails every rank. Every rank must call this.
    """
    key, _ = cache_key(data, storage, stats, device)
    path = cache_path(data, key)
    failure = None
    builder = rank == 0 or int(os.environ.get("LOCAL_RANK", rank)) == 0
    if builder and not os.path.exists(path):
        try:
            build_cache(data, path, storage, stats, device)
        except Exception as exc:  # every rank must learn of it, not only the one that failed
            failure = exc
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        reports: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(reports, None if failure is None else f"{type(failure).__name__}: {failure}")
        failed = [(r, report) for r, report in enumerate(reports) if report is not None]
        if failed and failure is None:
            raise RuntimeError(f"building the replay cache failed on rank {failed[0][0]}: {failed[0][1]}")
    if failure is not None:
        raise failure
    if rank == 0:
        log.info("training from the replay cache %s", path)
    return ReplaySource(
        ReplayCache(path), data.batch_size, rank, world_size, data.seed, device, batches_per_epoch, stats
    )
