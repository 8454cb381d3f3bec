"""Reading the evaluation inputs: labeled FOA sets (WebDataset shards + manifest) and held-out clips.

The labeled sets are the ones :mod:`dataloading.synth.evalsets` writes: per sample ``KEY.flac``
(4-channel FOA, ACN/SN3D) and ``KEY.json``; ``manifest.json`` lists each split's shards. Held-out clips
are a preprocessed shard dataset of scenes no training run used, read by the training loader's own
decoding path (:class:`dataloading.loader.ClipStream`) without augmentation, every clip exactly once.
SELD reads whole recordings of a STARSS23-format tree (:mod:`dataloading.layouts`) with their labels.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tarfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from dataloading.config import StorageConfig
from dataloading.dcase import FRAME_SECONDS, Event
from dataloading.features import FeatureExtractor
from dataloading.layouts import read_labels, starss23
from dataloading.resample import resample
from dataloading.schema import MANIFEST_NAME, SchemaError
from dataloading.storage import filesystem, join
from dataloading.synth.batches import SYNTHETIC_SCHEME, SyntheticSource
from dataloading.synth.evalsets import EVALSET_SCHEMA_VERSION
from trainer.config import Config

log = logging.getLogger(__name__)

# Synthetic sources draw fresh clips per epoch, so this far-off epoch holds clips no training run has seen.
HELD_OUT_EPOCH = 1_000_000
SYNTHETIC_CLIPS = 64  # held-out clips drawn from a synthetic source when the suite names no number
_CHUNK = 16  # clips per feature extraction: bounds the spectrogram memory


@dataclass
class LabeledSet:
    """One split of a labeled set: FOA ``[N, 4, samples]`` float32, its JSON and sample key per clip, and
    the manifest. Every clip is rendered on its own (room, placement): each key is its own scene."""

    foa: Tensor
    meta: list[dict[str, Any]]
    manifest: dict[str, Any]
    keys: list[str]

    @property
    def sample_rate(self) -> int:
        return int(self.manifest["sample_rate"])


def read_evalset_manifest(url: str, storage: StorageConfig | None = None) -> dict[str, Any]:
    """The ``manifest.json`` of the labeled set at ``url``; raises :class:`dataloading.schema.SchemaError`
    naming it when its version is not :data:`dataloading.synth.evalsets.EVALSET_SCHEMA_VERSION`."""
    manifest_url = join(url, MANIFEST_NAME)
    fs, path = filesystem(manifest_url, storage)
    manifest = json.loads(fs.cat_file(path))
    if manifest.get("schema_version") != EVALSET_SCHEMA_VERSION:
        fix = "re-run `avsa synth --eval-sets` to rewrite the labeled sets"
        raise SchemaError(manifest_url, manifest.get("schema_version"), EVALSET_SCHEMA_VERSION, fix)
    return manifest


def read_split(url: str, split: str, storage: StorageConfig | None = None) -> LabeledSet:
    """Every clip of ``split`` of the labeled set at ``url``, in shard order; clips of unequal length
    are cut to the shortest."""
    manifest = read_evalset_manifest(url, storage)
    if split not in manifest["splits"]:
        raise KeyError(f"{url}: no split {split!r} (has {sorted(manifest['splits'])})")
    waves: list[np.ndarray] = []
    metas: list[dict[str, Any]] = []
    keys: list[str] = []
    for shard in manifest["splits"][split]["shards"]:
        fs, path = filesystem(join(url, shard["name"]), storage)
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(path))) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for member in tar.getmembers():
                key, ext = member.name.rsplit(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
        for key, parts in members.items():
            wave, _ = sf.read(io.BytesIO(parts["flac"]), dtype="float32", always_2d=True)
            waves.append(wave.T)
            metas.append(json.loads(parts["json"]))
            keys.append(key)
    if not waves:
        raise ValueError(f"{url}: split {split!r} has no samples")
    n = min(w.shape[1] for w in waves)
    return LabeledSet(torch.from_numpy(np.stack([w[:, :n] for w in waves])), metas, manifest, keys)


@dataclass
class HeldOutClips:
    """Held-out clips read once each, with their K viewpoints: uint8 crops ``[N, K, 3, T, h, w]``, the
    normalised steered audio features ``[N, K, C, F, T']``, the viewpoint directions ``[N, K, 2]``
    (azimuth, elevation in radians), and per clip its key and scene (the input video it came from)."""

    video: Tensor
    audio: Tensor
    directions: Tensor
    keys: list[str]
    scenes: list[str]

    def __len__(self) -> int:
        return len(self.keys)


def held_out_clips(
    cfg: Config, url: str, extractor: FeatureExtractor, limit: int = 0, storage: StorageConfig | None = None
) -> HeldOutClips:
    """Every clip of the held-out set at ``url`` exactly once (the first ``limit`` when > 0; more than
    exist is an error), read with the run's data settings and no augmentation: the viewpoints, windows
    and crops are drawn from each sample's own seed, so an evaluation is reproducible.

    ``url`` is a shard dataset of held-out scenes, or ``synthetic://`` (clips of a far epoch, which no
    training run draws). ``extractor`` computes the features (the run's settings and statistics).
    """
    if url.startswith(SYNTHETIC_SCHEME):
        return _synthetic_clips(cfg, limit)
    from dataloading.loader import complete_pass  # imports DALI: only when shards are read
    from dataloading.shards import CompletePlan, list_shards

    storage = storage or cfg.storage
    shards = list_shards(url, storage)
    available = sum(s.samples for s in shards)
    if limit > available:
        raise ValueError(f"{url}: the suite asks for {limit} held-out clips but the set has {available}")
    plan = CompletePlan(shards, cfg.data.seed, limit)
    clips = list(complete_pass(cfg.data, plan, storage, crops=True, what="held-out clips"))
    if len(clips) < 4:
        raise ValueError(f"{url}: {len(clips)} readable held-out clips; the tasks need at least 4")
    foa = torch.stack([c.foa for c in clips]).unsqueeze(1)  # [N, 1, 4, samples]
    azimuth = torch.stack([c.azimuth for c in clips])
    elevation = torch.stack([c.elevation for c in clips])
    parts = zip(foa.split(_CHUNK), azimuth.split(_CHUNK), elevation.split(_CHUNK), strict=True)
    audio = torch.cat([extractor(f, a, e) for f, a, e in parts])
    return HeldOutClips(
        video=torch.stack([c.crops for c in clips]),
        audio=audio,
        directions=torch.stack((azimuth, elevation), -1),
        keys=[c.key for c in clips],
        scenes=[c.source for c in clips],
    )


def _synthetic_clips(cfg: Config, limit: int) -> HeldOutClips:
    """Clips of a synthetic source at an epoch no training run reaches (each clip its own scene)."""
    data = cfg.data
    count = limit or SYNTHETIC_CLIPS
    source = SyntheticSource(data, math.ceil(count / data.batch_size))
    source.set_epoch(HELD_OUT_EPOCH)
    batches = list(source)
    keys = [key for b in batches for key in b.meta["key"]][:count]
    return HeldOutClips(
        video=torch.cat([b.video for b in batches])[:count],
        audio=torch.cat([b.audio for b in batches])[:count],
        directions=torch.cat([b.directions for b in batches])[:count],
        keys=keys,
        scenes=keys,
    )


@dataclass
class SeldRecording:
    """One STARSS23-format recording for SELD: FOA ``[4, samples]`` float32 at ``rate`` Hz, its label
    events (radians, 100-ms frames) and its length in label frames."""

    stem: str
    foa: Tensor
    events: list[Event]
    frames: int


def read_seld_split(
    root: str, split: str, rate: int, storage: StorageConfig | None = None
) -> list[SeldRecording]:
    """The recordings of ``split`` (``dev-train`` or ``dev-test``) of the STARSS23-format tree at
    ``root`` that have FOA audio and labels (video is not needed), resampled to ``rate`` Hz.

    Raises ValueError naming the file for audio that is not 4-channel, :class:`dataloading.dcase.LabelError`
    for labels that do not parse, and ValueError when the split has no recording.
    """
    recordings = []
    for rec in starss23(root, storage).usable(("audio", "labels")):
        if rec.split != split:
            continue
        assert rec.audio and rec.labels  # usable() checked both
        fs, path = filesystem(rec.audio, storage)
        wave, source_rate = sf.read(io.BytesIO(fs.cat_file(path)), dtype="float32", always_2d=True)
        if wave.shape[1] != 4:
            raise ValueError(f"{rec.audio}: {wave.shape[1]} channels; SELD needs 4-channel FOA (foa_dev)")
        foa = resample(torch.from_numpy(np.ascontiguousarray(wave.T)), source_rate, rate)
        events = read_labels(rec.labels, storage)
        frames = math.ceil(foa.shape[-1] / (rate * FRAME_SECONDS) - 1e-6)
        recordings.append(SeldRecording(rec.stem, foa, [e for e in events if e.frame < frames], frames))
    if not recordings:
        raise ValueError(f"{root}: no {split} recording with foa_dev audio and metadata_dev labels")
    return recordings
