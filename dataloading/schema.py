"""The training sample format: keys, the per-sample JSON and the dataset manifest.

A sample (one clip) is three members of a WebDataset tar shard that share a key:
``KEY.mp4`` (equirect video, constant frame rate, short GOP), ``KEY.flac`` (4-channel FOA, AmbiX)
and ``KEY.json`` (:func:`sample_json`). Each shard ``shard-NNNNNN.tar`` has a DALI index
``shard-NNNNNN.idx``; the dataset has ``manifest.json`` (:func:`new_manifest`).
Angles are radians inside code and degrees in these JSON documents (user-facing).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

SCHEMA_VERSION = 1
EXTENSIONS = ("mp4", "flac", "json")  # members of every sample, in tar order
MANIFEST_NAME = "manifest.json"
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")
AUDIO_SIDECAR_SUFFIXES = (".flac", ".wav")

INPUT_ACCEPTED = "accepted"
INPUT_REJECTED = "rejected"


def shard_name(index: int) -> str:
    """File stem of shard ``index`` (``shard-000012``); ``.tar`` and ``.idx`` are added to it."""
    return f"shard-{index:06d}"


def source_id(url: str) -> str:
    """A stable, tar-safe id for an input URL: its sanitised stem plus a hash of the whole URL.

    WebDataset splits a member name at the first dot into key and extension, so the id has no dots;
    the hash keeps two inputs with the same file name in different folders apart.
    """
    stem = url.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", stem)[:48] or "input"
    return f"{safe}-{hashlib.sha1(url.encode()).hexdigest()[:8]}"


def sample_key(source: str, clip_index: int) -> str:
    """The key of clip ``clip_index`` of input ``source`` (a :func:`source_id`)."""
    return f"{source}_c{clip_index:05d}"


def direction_deg(azimuth: float, elevation: float) -> list[float]:
    """A direction in radians as the JSON pair [azimuth, elevation] in degrees, rounded to 0.01°."""
    return [round(float(azimuth) * 57.29577951308232, 2), round(float(elevation) * 57.29577951308232, 2)]


def sample_json(
    *,
    key: str,
    source_url: str,
    start: float,
    duration: float,
    fps: int,
    video_size: tuple[int, int],
    codec: str,
    audio_rate: int,
    input_format: str,
    objects: list[dict[str, Any]],
    detector: str,
    sounds: list[dict[str, Any]],
    labels: list[list[float]] | None = None,
    dataset: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``KEY.json`` of one sample.

    ``start`` and ``duration`` are seconds into the source; ``video_size`` is (width, height) pixels;
    ``audio_rate`` Hz. ``objects`` entries (best first): ``{"label", "score", "direction": [az°, el°],
    "size_deg", "time_s", "detector"}``; ``sounds`` entries (loudest first): ``{"direction": [az°, el°],
    "time_s", "level_db"}``; times are seconds into the clip.

    Inputs from a dataset layout (``avsa preprocess --layout``) add ``dataset``, where the clip comes
    from (``{"layout", "stem", "split", "fold", "room"}``, see :meth:`dataloading.layouts.Recording.
    dataset_json`), and where the recording is labelled (STARSS23) ``labels``: the events in the clip as
    rows ``[frame, class, source, azimuth°, elevation°(, distance m)]``, ``frame`` in 100-ms label frames
    from the clip's start, a frame repeated per overlapping event (:func:`dataloading.dcase.clip_rows`).
    Both keys are absent otherwise: no ``labels`` means unlabelled, ``[]`` means labelled silent.
    """
    meta = {
        "schema_version": SCHEMA_VERSION,
        "key": key,
        "source": source_url,
        "start_s": round(start, 6),
        "duration_s": round(duration, 6),
        "fps": fps,
        "video": {"width": video_size[0], "height": video_size[1], "codec": codec, "projection": "equirect"},
        "audio": {"sample_rate": audio_rate, "channels": 4, "format": "ambix", "input_format": input_format},
        "objects": objects,
        "detector": detector,
        "sounds": sounds,
    }
    return meta | {k: v for k, v in (("labels", labels), ("dataset", dataset)) if v is not None}


def new_manifest(settings: dict[str, Any]) -> dict[str, Any]:
    """An empty manifest for a run with these preprocessing ``settings``.

    ``shards`` maps shard name -> ``{"samples", "bytes", "sha256", "idx_bytes", "keys", "inputs", "node"}``
    (``node``: address of the Ray node whose actor wrote it);
    ``inputs`` maps input URL -> ``{"status", "reason", "clips", "shards", "failed_clips"}``.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "settings": settings,
        "shards": {},
        "inputs": {},
        "totals": {},
    }


def manifest_totals(manifest: dict[str, Any]) -> dict[str, int]:
    """Counts that must agree: accepted + rejected == inputs, samples == sum over shards."""
    statuses = [entry["status"] for entry in manifest["inputs"].values()]
    return {
        "inputs": len(statuses),
        "accepted": statuses.count(INPUT_ACCEPTED),
        "rejected": statuses.count(INPUT_REJECTED),
        "shards": len(manifest["shards"]),
        "samples": sum(s["samples"] for s in manifest["shards"].values()),
        "bytes": sum(s["bytes"] for s in manifest["shards"].values()),
    }
