"""The seam between data and trainer: the batch source a config names.

The trainer is written against :class:`dataloading.batch.BatchSource`, a small protocol that the shard
loader (:class:`dataloading.loader.Loader`), the replay cache (:mod:`dataloading.replay`) and the
synthetic batches (:class:`dataloading.synth.batches.SyntheticSource`; tests, benchmarks,
``--data.url synthetic://``) satisfy, yielding :class:`dataloading.batch.Batch`. Resuming needs only
``state_dict``/``load_state_dict``: the position inside the epoch. On the same world size a resumed run
sees exactly the batches an uninterrupted run would have seen; on another, the loader goes on with the
samples the epoch has not consumed yet (:mod:`dataloading.epoch`).
"""

from __future__ import annotations

import torch

from dataloading.batch import BatchSource
from dataloading.synth.batches import SYNTHETIC_SCHEME, SyntheticSource
from trainer.config import Config

# Config overrides for CPU-sized synthetic runs (tests, `python -m bench train`, quick demos):
# B=4 clips × K=2 viewpoints, 4 frames of 32×32 pixels, 32 mels × 33 frames (0.32 s) of audio.
TINY = {
    "model.preset": "tiny",
    "data.url": SYNTHETIC_SCHEME,
    "data.batch_size": 4,
    "data.viewpoints": 2,
    "data.frames": 4,
    "data.crop_size": 32,
    "data.n_mels": 32,
    "data.audio_seconds": 0.32,
}


def make_source(cfg: Config, rank: int, world_size: int, device: torch.device) -> BatchSource:
    """The batch source ``cfg.data.url`` names: ``synthetic://``, or a shard dataset for the loader.

    ``train.steps_per_epoch`` sets the batches per epoch (synthetic data has no natural epoch, so
    16 when unset; for a dataset 0 means one pass). A dataset's features are standardised with its
    statistics (:mod:`dataloading.dataset_stats`), computed by rank 0 on the first run. With
    ``data.cache_passes`` > 0 the batches come from the replay cache of the dataset
    (:mod:`dataloading.replay`), built by rank 0 on the first run.
    """
    if cfg.data.url.startswith(SYNTHETIC_SCHEME):
        return SyntheticSource(cfg.data, cfg.train.steps_per_epoch or 16, rank, world_size)
    # These import DALI: only when real data is read.
    from dataloading.dataset_stats import shared_stats
    from dataloading.loader import build_loader
    from dataloading.replay import replay_source

    stats = shared_stats(cfg.data, cfg.storage, rank)
    if cfg.data.cache_passes > 0:
        steps = cfg.train.steps_per_epoch
        return replay_source(cfg.data, cfg.storage, rank, world_size, device, steps, stats)
    return build_loader(
        cfg.data,
        rank,
        world_size,
        storage=cfg.storage,
        device=device,
        batches_per_epoch=cfg.train.steps_per_epoch,
        stats=stats,
    )
