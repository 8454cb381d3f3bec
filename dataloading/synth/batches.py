"""Synthetic training batches (``--data.url synthetic://``; tests and benchmarks): random crops and
features with a learnable audio↔video relation, a :class:`dataloading.batch.BatchSource` without files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from dataloading.batch import Batch
from dataloading.config import DataConfig
from dataloading.features import FeatureSettings

SYNTHETIC_SCHEME = "synthetic://"


def audio_frames(data: DataConfig) -> int:
    """STFT frames per viewpoint's audio (centred STFT: one frame per hop plus one)."""
    return round(data.audio_seconds * data.sample_rate) // data.hop + 1


class SyntheticSource:
    """Random batches with a learnable audio↔video relation, deterministic in (seed, epoch, rank, index).

    Each (clip, viewpoint) has a latent ``z = clip latent + viewpoint latent`` (``latent_dim``
    numbers). The video crop and the audio features are two different fixed random linear maps of
    ``z`` plus independent noise. So matching audio to video within a batch (AVC) is learnable from
    the clip part and telling a clip's viewpoints apart (AVSA) from the viewpoint part; a model
    that learned nothing scores chance: 1 / (global batch) on AVC, 1 / K on AVSA.

    Every epoch has ``batches_per_epoch`` steps on any world size; the position is the step count,
    the same on every rank, so a resume on another world size simply goes on from it.
    """

    def __init__(
        self,
        data: DataConfig,
        batches_per_epoch: int,
        rank: int = 0,
        world_size: int = 1,
        latent_dim: int = 8,
        noise: float = 0.2,
    ) -> None:
        self.data, self.batches_per_epoch = data, batches_per_epoch
        self.rank, self.world_size = rank, world_size
        self.noise = noise
        self.epoch, self.index = 0, 0
        self.stats = None  # the features are drawn standardised already
        d = data
        self.video_shape = (3, d.frames, d.crop_size, d.crop_size)
        self.audio_shape = (FeatureSettings.of(d).channels, d.n_mels, audio_frames(d))
        # The maps depend on the seed only: the relation to learn is the same in every epoch and rank.
        g = self._generator()
        self.video_map = torch.randn(latent_dim, int(np.prod(self.video_shape)), generator=g)
        self.audio_map = torch.randn(latent_dim, int(np.prod(self.audio_shape)), generator=g)
        self.latent_dim = latent_dim

    def _generator(self, *key: int) -> torch.Generator:
        """A generator seeded by (data.seed, *key); SeedSequence mixes the words, so nearby keys
        give unrelated streams."""
        words = [self.data.seed, *key]
        return torch.Generator().manual_seed(int(np.random.SeedSequence(words).generate_state(1)[0]))

    def __len__(self) -> int:
        return self.batches_per_epoch

    def batches_left(self) -> int:
        return self.batches_per_epoch - self.index

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.index = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, states: Sequence[dict[str, Any]]) -> None:
        if len({(s["epoch"], s["index"]) for s in states}) != 1:
            raise ValueError("the saved source states disagree on the epoch and batch: not one checkpoint")
        self.epoch, self.index = int(states[0]["epoch"]), int(states[0]["index"])

    def __iter__(self) -> Iterator[Batch]:
        while self.index < self.batches_per_epoch:
            batch = self.batch(self.epoch, self.index)
            self.index += 1
            yield batch

    def batch(self, epoch: int, index: int) -> Batch:
        """This rank's ``index``-th batch of ``epoch`` (a pure function of its arguments and the seed)."""
        b, k, scale = self.data.batch_size, self.data.viewpoints, self.latent_dim**-0.5
        g = self._generator(epoch, self.rank, index)
        z = torch.randn(b, 1, self.latent_dim, generator=g) + torch.randn(b, k, self.latent_dim, generator=g)
        z = z * scale  # keeps the signal's per-element variance ~2 whatever latent_dim is
        video = z @ self.video_map + self.noise * torch.randn(b, k, self.video_map.shape[1], generator=g)
        audio = z @ self.audio_map + self.noise * torch.randn(b, k, self.audio_map.shape[1], generator=g)
        azimuth = (torch.rand(b, k, generator=g) * 2 - 1) * torch.pi
        elevation = (torch.rand(b, k, generator=g) * 2 - 1) * np.deg2rad(self.data.max_elevation_deg)
        return Batch(
            video=video.view(b, k, *self.video_shape),
            audio=audio.view(b, k, *self.audio_shape),
            directions=torch.stack([azimuth, elevation], dim=-1),
            meta={"key": [f"synthetic/e{epoch}/r{self.rank}/b{index}/c{i}" for i in range(b)]},
        )
