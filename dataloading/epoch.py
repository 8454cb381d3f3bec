"""Which sample each rank reads at each position of an epoch, on any number of ranks.

**Fixed-epoch mode** (the default). The epoch has one *global order* of all its samples, a pure function
of (seed, epoch) and the shard list, never of the world size: shards shuffled by (seed, epoch) and
concatenated, then shuffled within consecutive blocks of :data:`SHUFFLE_BLOCK` samples by (seed, epoch,
block), so a batch mixes the samples of several shards. Consumption is global: at every step the W ranks
take the next W·B samples of the order that are not consumed yet, rank r the r-th B of them. Samples that
cannot fill a last global batch are left out of the epoch (fewer than W·B; the shuffle leaves out
different ones each epoch).

What a run has consumed is kept as sorted disjoint intervals of order indexes (:data:`Interval`):
a prefix ``[(0, n)]`` while no sample was bad, a few intervals more when a rank that met bad samples
read ahead into its next step's slots. Resuming on W' ranks starts a new *segment*: the samples not
consumed yet, in order, are split the same way among the W' ranks, so the rest of the epoch sees every
one of them exactly once (up to the last, partial global batch). Positions past a rank's share (for bad
samples, or a fixed number of batches per epoch larger than the data) supply substitutes: they cycle
through the whole order from its start and count as nothing consumed.

What is exact after a world-size change is this accounting of samples. The batches cannot equal an
uninterrupted run's at the old world size: the same samples are grouped into different global batches
in a different order. On the same world size a resumed rank continues its own stream exactly.

**Resampled mode** (open-ended training): each position draws a sample uniformly from the whole dataset,
with replacement, seeded by (seed, epoch, segment, rank, position); a new segment (a resume on another
world size) simply draws on with new seeds.

**Randomness per sample** (clip window, viewpoints, augmentation) is seeded by the sample's identity in
the epoch, (seed, epoch, order index, lap) with lap 0 for its own slot and 1, 2, … for substitutes, so it
does not depend on the rank or the world size. (Resampled draws have no identity beyond their position.)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from dataloading import seeds
from dataloading.shards import SampleRef, Shard

SHUFFLE_BLOCK = 1024  # samples: the global order is shuffled within blocks this long
Interval = tuple[int, int]  # [start, end) of order indexes


def normalize(intervals: Sequence[Sequence[int]]) -> list[Interval]:
    """``intervals`` sorted, without empty ones, overlapping and touching ones merged."""
    merged: list[Interval] = []
    for lo, hi in sorted((int(lo), int(hi)) for lo, hi in intervals if hi > lo):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def complement(intervals: Sequence[Interval], total: int) -> list[Interval]:
    """The parts of ``[0, total)`` not covered by the normalized ``intervals``."""
    free, start = [], 0
    for lo, hi in intervals:
        if lo > start:
            free.append((start, min(lo, total)))
        start = max(start, hi)
    if start < total:
        free.append((start, total))
    return free


def count(intervals: Sequence[Interval]) -> int:
    """How many indexes the normalized ``intervals`` cover."""
    return sum(hi - lo for lo, hi in intervals)


class EpochOrder:
    """The global order of one epoch's samples (see the module docstring); ``order[i]`` is a SampleRef."""

    def __init__(self, shards: Sequence[Shard], seed: int, epoch: int) -> None:
        counts = np.array([s.samples for s in shards], dtype=np.int64)
        self.seed, self.epoch, self.total = seed, epoch, int(counts.sum())
        self._shards = np.random.default_rng([seed, epoch]).permutation(len(shards))
        self._starts = np.concatenate(([0], np.cumsum(counts[self._shards])))
        self._blocks: dict[int, np.ndarray] = {}  # the few block permutations in use

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index: int) -> SampleRef:
        if not 0 <= index < self.total:
            raise IndexError(index)
        block, offset = divmod(index, SHUFFLE_BLOCK)
        base = block * SHUFFLE_BLOCK + int(self._block(block)[offset])
        k = int(np.searchsorted(self._starts, base, side="right")) - 1
        return SampleRef(int(self._shards[k]), base - int(self._starts[k]))

    def _block(self, block: int) -> np.ndarray:
        perm = self._blocks.get(block)
        if perm is None:
            if len(self._blocks) >= 4:  # a rank reads a few blocks at a time, in order
                self._blocks.clear()
            size = min(SHUFFLE_BLOCK, self.total - block * SHUFFLE_BLOCK)
            perm = self._blocks[block] = np.random.default_rng([self.seed, self.epoch, block]).permutation(
                size
            )
        return perm


class EpochPlan:
    """The sample at each position of one rank's stream, for one segment of an epoch.

    ``consumed`` (normalized intervals of order indexes) is what earlier segments of the epoch consumed;
    ``segment`` numbers the segment (the global step it started at). ``batches`` is the same on every
    rank: the global batches the samples not consumed yet can fill. Positions ``< batches · batch_size``
    are the rank's share; later ones are substitutes. ``quota`` (at least one batch) bounds a run of bad
    samples the loader tolerates.
    """

    def __init__(
        self,
        shards: Sequence[Shard],
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        epoch: int,
        resampled: bool = False,
        consumed: Sequence[Sequence[int]] = (),
        segment: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.shards, self.batch_size, self.rank, self.world_size = list(shards), batch_size, rank, world_size
        self.seed, self.epoch, self.resampled, self.segment = seed, epoch, resampled, segment
        self.order = EpochOrder(shards, seed, epoch)
        self.consumed = [] if resampled else normalize(consumed)
        self._free = complement(self.consumed, self.order.total)
        self._free_starts = np.concatenate(([0], np.cumsum([hi - lo for lo, hi in self._free])))
        self.batches = int(self._free_starts[-1]) // (world_size * batch_size)
        if self.batches == 0 and not self.consumed:
            raise ValueError(
                f"{self.order.total} samples cannot fill one batch of {batch_size} "
                f"on each of {world_size} ranks"
            )
        self.quota = max(self.batches, 1) * batch_size

    def _slot(self, position: int) -> int:
        """Where ``position`` of this rank falls in the segment's sequence of free samples."""
        step, j = divmod(position, self.batch_size)
        return (step * self.world_size + self.rank) * self.batch_size + j

    def identity(self, position: int) -> tuple[int, int]:
        """(order index, lap) of the sample at ``position``: lap 0 in the rank's share, 1, 2, … for
        substitutes (fixed-epoch mode)."""
        slot, usable = self._slot(position), self.batches * self.world_size * self.batch_size
        if slot < usable:
            k = int(np.searchsorted(self._free_starts, slot, side="right")) - 1
            return self._free[k][0] + slot - int(self._free_starts[k]), 0
        lap, index = divmod(slot - usable, self.order.total)
        return index, lap + 1

    def __getitem__(self, position: int) -> SampleRef:
        if position < 0:
            raise IndexError(position)
        if self.resampled:
            return self.order[int(self._draw(position).integers(self.order.total))]
        return self.order[self.identity(position)[0]]

    def _draw(self, position: int, *purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, self.segment, self.rank, position, *purpose])

    def sample_rng(self, position: int, purpose: int = seeds.SAMPLE) -> np.random.Generator:
        """The generator for everything random about the sample at ``position`` (window, viewpoints, ...):
        seeded by the sample's identity in the epoch (see the module docstring). Another ``purpose``
        gives an independent stream (:data:`dataloading.seeds.BATCH_AUGMENT`: the GPU augmentations of the
        batch this sample starts)."""
        if self.resampled:
            return self._draw(position, purpose)
        return np.random.default_rng([self.seed, self.epoch, *self.identity(position), purpose])

    def consumed_after(self, positions: Sequence[int]) -> list[Interval]:
        """What the epoch has consumed once rank r of this segment's ranks has read ``positions[r]``
        positions (bad samples included: re-reading them would not help), earlier segments included."""
        if self.resampled:
            return []
        w, b = self.world_size, self.batch_size
        if len(positions) != w:
            raise ValueError(f"{len(positions)} positions for a segment of {w} ranks")
        common = min(positions) // b  # steps every rank completed: one prefix of the segment
        slots = [(0, common * w * b)]
        for rank, position in enumerate(positions):
            steps, part = divmod(position, b)
            slots += [((s * w + rank) * b, (s * w + rank + 1) * b) for s in range(common, steps)]
            slots.append(((steps * w + rank) * b, (steps * w + rank) * b + part))
        usable = self.batches * w * b  # substitutes consume nothing
        taken = normalize([(lo, min(hi, usable)) for lo, hi in slots])
        return normalize([*self.consumed, *(piece for lo, hi in taken for piece in self._in_order(lo, hi))])

    def _in_order(self, lo: int, hi: int) -> Iterator[Interval]:
        """Free slots ``[lo, hi)`` of this segment as intervals of order indexes."""
        k = int(np.searchsorted(self._free_starts, lo, side="right")) - 1
        while lo < hi:
            start, end = self._free[k]
            offset = lo - int(self._free_starts[k])
            n = min(hi - lo, end - start - offset)
            yield start + offset, start + offset + n
            lo, k = lo + n, k + 1
