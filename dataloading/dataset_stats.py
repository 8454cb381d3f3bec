"""Normalisation statistics of a shard dataset: computed from its steered training features on the first
training run (or by ``avsa stats``), stored beside the dataset, reused by every later run.

The statistics are those of the features the network sees before normalisation: each clip's FOA window
steered toward its K viewpoints from the configured sampler, without the volume jitter (augmentation is
a training-time perturbation around this distribution, not part of it). ``data.stats_clips`` clips,
spread over the whole dataset, are enough: the mean and std of each channel × mel band settle within a
few hundred clips of thousands of frames each.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

import torch
import torch.distributed as dist

from dataloading.batch import Clip
from dataloading.config import DataConfig, StorageConfig
from dataloading.feature_stats import FeatureStats, StatsMismatch, compute_stats, dataset_stats_url
from dataloading.features import FeatureExtractor
from dataloading.loader import complete_pass
from dataloading.shards import CompletePlan, Shard, list_shards
from dataloading.storage import filesystem

log = logging.getLogger(__name__)

# Clips per feature batch: bounds the spectrogram memory of the extraction.
_BATCH = 16


def dataset_fingerprint(shards: list[Shard]) -> str:
    """A hash of a dataset's shard names and sample counts: statistics of a rewritten dataset are stale."""
    text = "\n".join(f"{s.url.rsplit('/', 1)[-1]} {s.samples}" for s in shards)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def stats_location(data: DataConfig) -> str:
    """``data.stats_url``, else the dataset's own file for these feature settings."""
    return data.stats_url or dataset_stats_url(data.url, FeatureExtractor.from_config(data).settings)


def compute_dataset_stats(data: DataConfig, storage: StorageConfig | None = None) -> FeatureStats:
    """Statistics of the steered features of ``data.stats_clips`` clips of the dataset at ``data.url``."""
    shards = list_shards(data.url, storage)
    extractor = FeatureExtractor.from_config(data)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        clips: list[Clip] = []
        plan = CompletePlan(shards, data.seed, data.stats_clips)
        for clip in complete_pass(data, plan, storage, crops=False, what="feature statistics"):
            clips.append(clip)
            if len(clips) == _BATCH:
                yield _stack(clips)
                clips = []
        if clips:
            yield _stack(clips)

    return compute_stats(extractor, batches(), extractor.settings, dataset_fingerprint(shards))


def _stack(clips: list[Clip]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(foa ``[b, 1, 4, N]``, azimuth ``[b, K]``, elevation ``[b, K]``) for the extractor."""
    foa = torch.stack([c.foa for c in clips]).unsqueeze(1)
    return foa, torch.stack([c.azimuth for c in clips]), torch.stack([c.elevation for c in clips])


def load_or_compute(
    data: DataConfig, storage: StorageConfig | None = None, *, recompute: bool = False
) -> tuple[FeatureStats, str]:
    """The dataset's statistics for ``data``'s feature settings and where they live; computed and saved
    first if missing (or if ``recompute``). Refuses statistics of other settings or of another version of
    the dataset (:class:`dataloading.feature_stats.StatsMismatch`), naming both."""
    url = stats_location(data)
    settings = FeatureExtractor.from_config(data).settings
    fs, path = filesystem(url, storage)
    if not recompute and fs.exists(path):
        stats = FeatureStats.load(url, settings, storage)
        current = dataset_fingerprint(list_shards(data.url, storage))
        if stats.dataset and stats.dataset != current:
            raise StatsMismatch(
                f"the statistics in {url} were computed from dataset version {stats.dataset}, but "
                f"{data.url} is now version {current} (it was rewritten); recompute them with "
                f"`avsa stats --data.url {data.url} --recompute`"
            )
        return stats, url
    log.info("computing feature statistics of %s (up to %d clips) -> %s", data.url, data.stats_clips, url)
    stats = compute_dataset_stats(data, storage)
    stats.save(url, storage)
    return stats, url


def shared_stats(data: DataConfig, storage: StorageConfig | None, rank: int) -> FeatureStats:
    """:func:`load_or_compute` on rank 0, the result on every rank (one computation per job).

    A failure on rank 0 is raised on every rank, so no rank waits forever for a broadcast.
    """
    result: list[object] = [None]
    if rank == 0:
        try:
            result[0] = load_or_compute(data, storage)[0]
        except Exception as exc:  # every rank must learn of it, not only the one that failed
            result[0] = exc
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(result, src=0)
    if isinstance(result[0], Exception):
        raise result[0]
    assert isinstance(result[0], FeatureStats)
    return result[0]
