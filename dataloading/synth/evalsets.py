"""Labeled evaluation sets from the real recordings, as WebDataset shards with a manifest.

- ``classification``: 4-channel FOA clips of one sound each, labelled with its class. The test
  split uses only recordings from sources (kits, packs, recordists) never used in its training
  split — nor in any generated training video — and rooms from the evaluation family.
- ``doa``: FOA clips with one static source at a known direction: a ``train`` split for the heads in
  probe-family rooms and a ``test`` split in evaluation-family rooms (size/reverb ranges that neither
  the other split nor any training video uses).

Each sample is ``KEY.flac`` (4-channel FOA, ACN/SN3D, 16-bit) + ``KEY.json``; each set has
``manifest.json`` (shards with sample counts, byte sizes and SHA-256, classes, sources per split,
rejected assets with reasons).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from itertools import islice

import numpy as np
from tqdm import tqdm

from dataloading import seeds
from dataloading.config import StorageConfig
from dataloading.seeds import stable_seed
from dataloading.storage import join, write_bytes_atomic
from dataloading.synth.assets import AssetError, Catalog, SoundAsset, load_sound
from dataloading.synth.scene import Room, Source, max_distance, sample_room, unit_vector
from dataloading.synth.spatialize import diffuse_noise, dry_signal, render_source
from dataloading.transcode import flac_bytes

# The eval sets' manifest and sample JSON have their own version: they are another format than the
# training dataset's (dataloading.schema), read by evaluation.datasets, and change with this module.
EVALSET_SCHEMA_VERSION = 1
SHARD_SIZE = 256  # samples per tar shard
TEST_FRACTION = 1 / 3  # of each class's sources


def held_out_sources(catalog: Catalog) -> set[str]:
    """Sources reserved for the classification test split: for every class with at least two
    sources, about a third of them (at least one), chosen by a stable hash, never taking a
    source whose other classes would then have no training source left."""
    sources_of = {label: sorted({s.source for s in catalog.by_label(label)}) for label in catalog.labels()}
    held: set[str] = set()
    for label in sorted(sources_of, key=lambda k: (len(sources_of[k]), k)):
        sources = sources_of[label]
        if len(sources) < 2:
            continue
        want = max(1, int(len(sources) * TEST_FRACTION))
        for source in sorted(sources, key=lambda s: stable_seed(seeds.SOURCE_SPLIT, s)):
            if sum(s in held for s in sources) >= want:
                break
            leaves_train = all(
                any(s not in held and s != source for s in others)
                for others in sources_of.values()
                if source in others
            )
            if leaves_train:
                held.add(source)
    return held


def classification_split(catalog: Catalog) -> dict[str, dict[str, list[SoundAsset]]]:
    """{class: {"train": assets, "test": assets}} for the classes that have both splits."""
    held = held_out_sources(catalog)
    split = {}
    for label in catalog.labels():
        assets = catalog.by_label(label)
        train = [a for a in assets if a.source not in held]
        test = [a for a in assets if a.source in held]
        if train and test:
            split[label] = {"train": train, "test": test}
    return split


def static_source(
    ident: int,
    sound: SoundAsset | None,
    az: float,
    el: float,
    distance: float,
    events: list[tuple[float, float]],
) -> Source:
    return Source(ident, "offscreen", None, sound, az, el, 0.0, 0.0, 1.0, distance, 0.0, 0.0, events)


def render_clip(
    sources: list[tuple[Source, np.ndarray]], room: Room, seconds: float, rate: int, rng: np.random.Generator
) -> np.ndarray:
    """FOA [4, N] of static sources (each with its mono recording) in ``room`` plus diffuse noise,
    peak-normalised to 0.9."""
    n = int(seconds * rate)
    mix = diffuse_noise(n, float(rng.uniform(-40, -30)), rng)
    for source, wave in sources:
        mix += render_source(
            source, dry_signal(source, wave, n, rate, rng), room, rate, int(rng.integers(2**31))
        )
    return mix * (0.9 / max(np.abs(mix).max(), 1e-9))


def random_placement(rng: np.random.Generator, room: Room) -> tuple[float, float, float]:
    """(azimuth, elevation, distance): any azimuth, elevation −30°…+45°, 1–3 m but inside the room."""
    az, el = float(rng.uniform(-np.pi, np.pi)), float(np.deg2rad(rng.uniform(-30, 45)))
    limit = 0.9 * max_distance(room, unit_vector(np.array(az), np.array(el)))
    return az, el, float(min(rng.uniform(1.0, 3.0), limit))


def tar_bytes(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    """A tar of (key, {ext: bytes}) samples with fixed metadata: same content, same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, parts in samples:
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_shards(
    url: str, prefix: str, samples: Iterator[tuple[str, dict[str, bytes]]], storage: StorageConfig | None
) -> list[dict]:
    """Write samples as WebDataset shards ``PREFIX-000000.tar`` …; returns their manifest entries."""
    shards: list[dict] = []
    while batch := list(islice(samples, SHARD_SIZE)):
        data = tar_bytes(batch)
        name = f"{prefix}-{len(shards):06d}.tar"
        write_bytes_atomic(join(url, name), data, storage)
        digest = hashlib.sha256(data).hexdigest()
        shards.append({"name": name, "samples": len(batch), "bytes": len(data), "sha256": digest})
    return shards


def classification_set(
    url: str,
    catalog: Catalog,
    clips_per_class: int,
    seed: int,
    *,
    test_clips_per_class: int | None = None,
    rate: int = 24000,
    seconds: float = 1.0,
    storage: StorageConfig | None = None,
    progress: bool = True,
) -> dict:
    """Write the classification set (``train``/``test`` shards) under ``url``; returns the manifest.
    The test split gets ``test_clips_per_class`` clips per class (default: as many as training)."""
    split = classification_split(catalog)
    classes = sorted(split)
    rejected: dict[str, str] = {}
    manifest: dict = {
        "schema_version": EVALSET_SCHEMA_VERSION,
        "kind": "classification",
        "sample_rate": rate,
        "seconds": seconds,
        "classes": classes,
        "splits": {},
        "rejected": [],
    }
    test_count = clips_per_class if test_clips_per_class is None else test_clips_per_class
    for part, count, family in (("train", clips_per_class, "train"), ("test", test_count, "eval")):
        rng = np.random.default_rng(stable_seed(seeds.CLASSIFICATION_SET, seed, part))
        bar = tqdm(
            total=count * len(classes), desc=f"classification {part}", unit="clip", disable=not progress
        )

        def samples(
            part: str = part,
            count: int = count,
            family: str = family,
            rng: np.random.Generator = rng,
            bar: tqdm = bar,
        ) -> Iterator[tuple[str, dict[str, bytes]]]:
            for label in classes:
                usable = list(split[label][part])
                made = 0
                while made < count and usable:
                    asset = usable[rng.integers(len(usable))]
                    try:
                        wave = load_sound(asset.path, rate)
                    except AssetError as exc:
                        rejected[asset.path] = str(exc)
                        usable.remove(asset)
                        continue
                    room = sample_room(rng, family)
                    az, el, distance = random_placement(rng, room)
                    on = float(rng.uniform(0, 0.3 * seconds))
                    source = static_source(0, asset, az, el, distance, [(on, seconds)])
                    foa = render_clip([(source, wave)], room, seconds, rate, rng)
                    meta = {
                        "label": label,
                        "label_index": classes.index(label),
                        "sound_file": asset.name,
                        "sound_source": asset.source,
                        "split": part,
                        "room_family": room.family,
                        "azimuth_deg": round(float(np.rad2deg(az)), 3),
                        "elevation_deg": round(float(np.rad2deg(el)), 3),
                    }
                    key = f"{part}_{label}_{made:05d}"
                    yield key, {"flac": flac_bytes(foa, rate, bits=16), "json": json.dumps(meta).encode()}
                    made += 1
                    bar.update()

        shards = write_shards(url, f"cls-{part}", samples(), storage)
        bar.close()
        manifest["splits"][part] = {
            "shards": shards,
            "samples": sum(s["samples"] for s in shards),
            "sources": sorted({a.source for label in classes for a in split[label][part]}),
            "room_family": family,
        }
    manifest["rejected"] = [{"path": p, "reason": r} for p, r in sorted(rejected.items())]
    write_bytes_atomic(join(url, "manifest.json"), json.dumps(manifest, indent=1).encode(), storage)
    return manifest


# DOA splits: the head trains in "probe" rooms and is tested in "eval" rooms; pretraining uses "train".
DOA_SPLITS = (("train", "probe"), ("test", "eval"))


def doa_set(
    url: str,
    catalog: Catalog,
    clips: int,
    seed: int,
    *,
    rate: int = 24000,
    seconds: float = 1.0,
    storage: StorageConfig | None = None,
    progress: bool = True,
) -> dict:
    """Write the localisation set: ``clips`` single-source clips per split at known directions, the
    ``train`` split (for the heads) in probe-family rooms and the ``test`` split in evaluation-family
    rooms, neither used by pretraining videos; returns the manifest."""
    rejected: dict[str, str] = {}
    sounds = list(catalog.sounds)
    manifest: dict = {
        "schema_version": EVALSET_SCHEMA_VERSION,
        "kind": "doa",
        "sample_rate": rate,
        "seconds": seconds,
        "conventions": "FOA ACN/SN3D; azimuth counter-clockwise from front, elevation up, degrees",
        "splits": {},
    }
    for part, family in DOA_SPLITS:
        rng = np.random.default_rng(stable_seed(seeds.DOA_SET, seed, part))

        def samples(part: str = part, family: str = family, rng: np.random.Generator = rng) -> Iterator:
            for index in tqdm(range(clips), desc=f"doa {part}", unit="clip", disable=not progress):
                room = sample_room(rng, family)
                while sounds:
                    asset = sounds[rng.integers(len(sounds))]
                    try:
                        wave = load_sound(asset.path, rate)
                        break
                    except AssetError as exc:
                        rejected[asset.path] = str(exc)
                        sounds.remove(asset)
                else:
                    raise AssetError("no usable sound left for the DOA set")
                az, el, distance = random_placement(rng, room)
                events = [(round(float(rng.uniform(0, seconds / 4)), 3), seconds)]
                foa = render_clip(
                    [(static_source(0, asset, az, el, distance, events), wave)], room, seconds, rate, rng
                )
                meta = {
                    "sources": [
                        {
                            "class": asset.label,
                            "sound_file": asset.name,
                            "active": [list(events[0])],
                            "azimuth_deg": round(float(np.rad2deg(az)), 3),
                            "elevation_deg": round(float(np.rad2deg(el)), 3),
                            "distance_m": round(distance, 3),
                        }
                    ],
                    "room": {"dims_m": list(room.dims), "rt60_s": room.rt60, "family": room.family},
                }
                yield (
                    f"doa_{part}_{index:05d}",
                    {"flac": flac_bytes(foa, rate, bits=16), "json": json.dumps(meta).encode()},
                )

        shards = write_shards(url, f"doa-{part}", samples(), storage)
        manifest["splits"][part] = {
            "shards": shards,
            "samples": sum(s["samples"] for s in shards),
            "room_family": family,
        }
    manifest["rejected"] = [{"path": p, "reason": r} for p, r in sorted(rejected.items())]
    write_bytes_atomic(join(url, "manifest.json"), json.dumps(manifest, indent=1).encode(), storage)
    return manifest
