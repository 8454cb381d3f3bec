"""The replay cache (dataloading/replay.py) on tiny real shards: what it holds is what the loader yields,
and its epochs split, repeat and resume as the loader's do.

13 clips in two shards, 2 passes, batches of 2 clips × 4 viewpoints of 4 frames of 32×32, 16 mels;
DALI decodes on the CPU in-process. About half a minute on 2 cores.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dataloading.batch import Batch, BatchSource, to_uint8
from dataloading.config import DataConfig
from dataloading.feature_stats import FeatureStats
from dataloading.loader import build_loader
from dataloading.replay import ReplayCache, ReplaySource, cache_key, cache_path, replay_source
from dataloading.synth.samples import write_dataset
from tests.distributed import run_distributed
from trainer.config import Config, load_config
from trainer.data import make_source

SIZES = [6, 7]  # 13 clips: a loader epoch of 2-clip batches leaves one out, the cache keeps all
PASSES = 2


def config(url: str, cache_dir: str, **data: object) -> Config:
    settings = {
        "data.url": url,
        "data.batch_size": 2,
        "data.frames": 4,
        "data.crop_size": 32,
        "data.n_mels": 16,
        "data.workers": 0,
        "data.stats_clips": 8,
        "data.cache_passes": PASSES,
        "data.cache_dir": cache_dir,
    }
    return load_config(None, settings | {f"data.{k}": v for k, v in data.items()})


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, ReplaySource, list[str]]:
    """The dataset, and its replay source made by make_source (which builds the cache)."""
    root = tmp_path_factory.mktemp("shards")
    keys = write_dataset(str(root), SIZES, seconds=1.5)
    cfg = config(str(root), str(tmp_path_factory.mktemp("replay")))
    source = make_source(cfg, 0, 1, torch.device("cpu"))
    assert isinstance(source, ReplaySource)
    return cfg, source, keys


def source_of(
    cfg: Config, cache: ReplayCache, rank: int = 0, world: int = 1, **kwargs: object
) -> ReplaySource:
    d = cfg.data
    options = {"batch_size": d.batch_size, "seed": d.seed} | kwargs
    return ReplaySource(cache, rank=rank, world_size=world, **options)  # type: ignore[arg-type]


def tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor copy of (a part of) a read-only mapped cache array."""
    return torch.from_numpy(np.array(array))


def identities(batches: list[Batch]) -> list[tuple[str, bytes]]:
    """Each sample as (clip key, its directions): which clip, and which of its cached sets."""
    return [
        (key, batch.directions[i].numpy().tobytes())
        for batch in batches
        for i, key in enumerate(batch.meta["key"])
    ]


def test_the_cache_holds_the_loaders_epochs(built: tuple[Config, ReplaySource, list[str]]) -> None:
    """Set p of every clip is what loader epoch p yields for it: video exactly (the worker's uint8 crops),
    features within float16 rounding, directions, fields of view, flips and windows exactly."""
    cfg, source, keys = built
    cache = source.cache
    assert isinstance(source, BatchSource)
    assert sorted(cache.keys) == sorted(keys) and cache.have.all()  # every clip in every pass
    assert cache.video.dtype == np.uint8 and cache.audio.dtype == np.float16
    row = {(shard, key): r for r, (shard, key) in enumerate(zip(cache.shards, cache.keys, strict=True))}
    errors, rms, scale, seen = [], [], [], 0
    for p in range(PASSES):
        loader = build_loader(cfg.data, epoch=p, stats=source.stats)
        for batch in loader:
            for j, (shard, key) in enumerate(zip(batch.meta["shard"], batch.meta["key"], strict=True)):
                r = row[(shard, key)]
                assert torch.equal(to_uint8(batch.video[j]), tensor(cache.video[r, p]))
                assert torch.equal(batch.video[j], tensor(cache.video[r, p]).float() / 255.0)
                cached = tensor(cache.audio[r, p].astype(np.float32))
                errors.append((cached - batch.audio[j]).abs().max().item())
                rms.append((cached - batch.audio[j]).square().mean().sqrt().item())
                scale.append(batch.audio[j].abs().max().item())
                bound = batch.audio[j].abs() * 2.0**-11 + 1e-6  # float16: 11 significant bits
                assert ((cached - batch.audio[j]).abs() <= bound).all()
                assert torch.equal(batch.directions[j], tensor(cache.directions[r, p]))
                assert torch.equal(batch.meta["fov"][j], tensor(cache.fov[r, p]))
                assert bool(batch.meta["flipped"][j]) == bool(cache.flipped[r, p])
                assert batch.meta["start_s"][j] == cache.start_s[r, p]
                seen += 1
        assert len(loader) == 6
    assert seen == PASSES * 12
    print(
        f"float16 features: largest error {max(errors):.2e} at a largest |feature| of {max(scale):.2f}, "
        f"root mean square error {np.sqrt(np.mean(np.square(rms))):.2e}"
    )
    # The source's batches have the loader's layout.
    loader_batch = next(iter(build_loader(cfg.data, stats=source.stats)))
    ours = next(iter(source_of(cfg, cache)))
    for name in ("video", "audio", "directions"):
        a, b = getattr(ours, name), getattr(loader_batch, name)
        assert (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device), name
    assert ours.meta.keys() == loader_batch.meta.keys()
    assert (ours.meta["fov"].dtype, ours.meta["flipped"].dtype) == (torch.float32, torch.bool)


def test_an_epoch_shows_every_clip_once_across_ranks(built: tuple[Config, ReplaySource, list[str]]) -> None:
    """Rank r of W takes every W-th batch of the epoch's order: 3 ranks × 2 batches of 2 cover 12 of the 13
    clips, each once, with the same batches as one rank's epoch; the clip left out changes by epoch."""
    cfg, source, keys = built
    one = source_of(cfg, source.cache)
    left_out = set()
    for epoch in (0, 1, 2):
        one.set_epoch(epoch)
        single = [batch.meta["key"] for batch in one]
        assert len(single) == 6
        ranks = [source_of(cfg, source.cache, rank, 3) for rank in range(3)]
        split = []
        for rank, s in enumerate(ranks):
            s.set_epoch(epoch)
            assert len(s) == s.batches_left() == 2
            mine = [batch.meta["key"] for batch in s]
            assert mine == single[rank::3]
            split += [key for batch in mine for key in batch]
        assert len(split) == len(set(split)) == 12
        left_out |= set(keys) - set(split)
    assert len(left_out) > 1
    # More steps than one pass: further laps, every clip once per lap.
    long = source_of(cfg, source.cache, batches_per_epoch=13)
    laps = [key for batch in long for key in batch.meta["key"]]
    assert sorted(laps[:13]) == sorted(laps[13:]) == sorted(keys)


def test_the_same_seed_gives_the_same_epoch(built: tuple[Config, ReplaySource, list[str]]) -> None:
    cfg, source, _ = built

    def epoch(seed: int, e: int) -> list[Batch]:
        s = source_of(cfg, source.cache, seed=seed)
        s.set_epoch(e)
        return list(s)

    a, b = epoch(0, 3), epoch(0, 3)
    for x, y in zip(a, b, strict=True):
        assert x.meta["key"] == y.meta["key"]
        assert torch.equal(x.video, y.video) and torch.equal(x.audio, y.audio)
    assert identities(a) != identities(epoch(0, 4))
    assert identities(a) != identities(epoch(1, 3))
    # Both cached sets are used: over a few epochs the clips show either pass.
    sets = {ident for e in range(4) for ident in identities(epoch(0, e))}
    assert len(sets) > 13


@pytest.mark.parametrize("world", [1, 2, 3])
def test_resume_on_any_world_size_continues_with_the_samples_not_consumed(
    built: tuple[Config, ReplaySource, list[str]], world: int
) -> None:
    """2 ranks take 1 batch each (4 of the epoch's 12 samples), then `world` ranks go on from the saved
    states: they hand out the next samples of the epoch's order, each once, up to the last whole global
    batch; on the saving world size the same batches an uninterrupted run has."""
    cfg, source, _ = built
    cache, epoch = source.cache, 1
    stream = source_of(cfg, cache, batch_size=1, batches_per_epoch=12)  # the epoch's order, one by one
    stream.set_epoch(epoch)
    order = identities(list(stream))
    saving = [source_of(cfg, cache, rank, 2) for rank in range(2)]
    head = []
    for s in saving:
        s.set_epoch(epoch)
        head += identities([next(iter(s))])
    states = [s.state_dict() for s in saving]
    assert states[0] == states[1] and states[0]["consumed"] == 4
    assert sorted(head) == sorted(order[:4])
    fresh = [source_of(cfg, cache, rank, world) for rank in range(world)]
    for s in fresh:
        s.load_state_dict(states)
    with pytest.raises(ValueError, match="shard loader"):  # a loader's position is no replay position
        fresh[0].load_state_dict([{"epoch": 1, "batch": 2, "position": 4}])
    left = (12 - 4) // (2 * world)
    assert {s.batches_left() for s in fresh} == {left}
    tail = [list(s) for s in fresh]
    # Global step i of the resumed epoch: rank r's i-th batch, ranks in order.
    resumed = [ident for i in range(left) for batches in tail for ident in identities([batches[i]])]
    assert resumed == order[4 : 4 + left * 2 * world]
    assert len(set(head + resumed)) == len(head + resumed)
    if world == 2:  # the saving world size: exactly the uninterrupted run's batches
        for rank in range(2):
            whole = source_of(cfg, cache, rank, 2)
            whole.set_epoch(epoch)
            for got, expected in zip(tail[rank], list(whole)[1:], strict=True):
                assert got.meta["key"] == expected.meta["key"]
                assert torch.equal(got.video, expected.video) and torch.equal(got.audio, expected.audio)
    assert all(list(s) == [] for s in fresh)  # the epoch is over until set_epoch moves on
    fresh[0].set_epoch(epoch + 1)
    assert fresh[0].batches_left() == len(fresh[0]) == 12 // (2 * world)


def test_a_changed_setting_gives_another_cache(
    built: tuple[Config, ReplaySource, list[str]], tmp_path: Path
) -> None:
    cfg, source, _ = built
    d = cfg.data
    key, _ = cache_key(d, stats=source.stats)
    assert cache_path(d, key) == source.cache.path
    same = [dataclasses.replace(d, workers=3, batch_size=5, cache_dir="elsewhere")]
    for data in same:
        assert cache_key(data, stats=source.stats)[0] == key
    changed = {
        "flip_prob": 0.25,
        "n_mels": 24,
        "crop_size": 48,
        "viewpoint_sampler": "random",
        "fov_deg": (30.0, 60.0),
        "seed": 1,
        "cache_passes": 3,
    }
    keys = {key}
    for name, value in changed.items():
        keys.add(cache_key(dataclasses.replace(d, **{name: value}), stats=source.stats)[0])
    assert len(keys) == len(changed) + 1
    assert source.stats is not None
    other = FeatureStats(**(dataclasses.asdict(source.stats) | {"count": source.stats.count + 1}))
    assert cache_key(d, stats=other)[0] != key
    assert cache_key(d, stats=source.stats, device="cuda")[0] != key
    # The same URL holding another dataset (rewritten) is another cache.
    url = str(tmp_path / "data")
    write_dataset(url, [2], seconds=0.5, seed=0)
    first = cache_key(dataclasses.replace(d, url=url))[0]
    write_dataset(url, [2], seconds=0.5, seed=1)
    assert cache_key(dataclasses.replace(d, url=url))[0] != first


def _two_ranks(rank: int, world_size: int, data: DataConfig) -> tuple[list[str], int]:
    source = replay_source(data, None, rank, world_size, "cpu")
    return [key for batch in source for key in batch.meta["key"]], len(os.listdir(data.cache_dir))


def test_rank_zero_builds_and_the_others_wait(
    built: tuple[Config, ReplaySource, list[str]], tmp_path: Path
) -> None:
    """With a process group up, rank 0 builds the cache while rank 1 waits, then both read it."""
    cfg, _, keys = built
    data = dataclasses.replace(cfg.data, cache_passes=1, cache_dir=str(tmp_path / "cache"))
    (keys0, files0), (keys1, files1) = run_distributed(_two_ranks, 2, data, timeout_s=240)
    assert files0 == files1 == 1  # one file, no temporaries left
    assert len(keys0) == len(keys1) == 6 and not set(keys0) & set(keys1)
    assert set(keys0 + keys1) < set(keys)
