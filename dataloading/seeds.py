"""The salts that keep the project's seeded random streams apart, each with the stream it separates.

Seeds are derived two ways, and each way takes its salts from here:

- numpy ``default_rng([word, ...])`` (a SeedSequence over the words): a stream is seeded by its identity
  (the run's ``data.seed``, the epoch, a sample's place ...) followed by a *purpose* word below, so two
  uses of one identity draw independent numbers.
- :func:`stable_seed` ``(salt, ...)`` in the synthetic data: a CRC of a salt string below and the parts.

The values are frozen: changing one changes every window, viewpoint, split or synthetic clip that its
stream draws (tests pin synthetic outputs). A new stream takes a new value.
"""

from __future__ import annotations

import zlib

# Purpose words, last in the words of a numpy seed.
SAMPLE = 1  # a training sample's window, viewpoints and worker-side augmentation (EpochPlan.sample_rng)
BATCH_AUGMENT = 2  # GPU decoding: the augmentations of the batch whose first sample it is (the loader)
DATASET_SAMPLE = 3  # a sample read in dataset order, for evaluation and statistics (CompletePlan)
DATASET_SUBSET = 4  # which samples a CompletePlan with a limit keeps
PAIR_FOLDS = 5  # the pairs task: which of two folds each held-out scene falls in
PRETEXT_BATCHES = 6  # the pretext task: the order in which scenes are dealt into batches
REPLAY_ORDER = 7  # the replay cache: the order of the cached clips in an epoch (ReplaySource)
REPLAY_SET = 8  # the replay cache: which cached set of viewpoints each clip shows in an epoch

# Salts of stable_seed, first of its parts (the synthetic data).
VIDEO = "video"  # generate: the scene seed of video i, from (SynthOptions.seed, i)
SCENE = "scene"  # scene: the room, sources and trajectories a scene seed samples
SCENE_AUDIO = "audio"  # spatialize: a scene's background noise and the gaps in its sources' dry signals
REVERB_TAIL = "tail"  # spatialize: each source's diffuse reverberation tail, from (scene seed, source id)
SOURCE_SPLIT = "split"  # evalsets: the order in which recording sources are held out for testing
CLASSIFICATION_SET = "classification"  # evalsets: the classification set's clips, per split
DOA_SET = "doa"  # evalsets: the DOA set's clips, per split

# Added to SynthOptions.seed: the demo's held-out raw videos, apart from its training videos.
HELD_OUT_SEED_OFFSET = 1000


def stable_seed(*parts: object) -> int:
    """A seed (32-bit unsigned int) that is the same in every process (``hash`` of a str is salted per
    process): the CRC-32 of ``repr(parts)``."""
    return zlib.crc32(repr(parts).encode())
