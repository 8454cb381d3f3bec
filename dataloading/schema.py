"""The training sample format: keys, the per-sample JSON and the dataset manifest, as typed records.

A sample (one clip) is three members of a WebDataset tar shard that share a key:
``KEY.mp4`` (equirect video, constant frame rate, short GOP), ``KEY.flac`` (4-channel FOA, AmbiX)
and ``KEY.json`` (:class:`SampleMeta`). Each shard ``shard-NNNNNN.tar`` has a DALI index
``shard-NNNNNN.idx``; the dataset has ``manifest.json`` (:class:`Manifest`).
Angles are radians inside code and degrees in these JSON documents (user-facing).

Both documents carry :data:`SCHEMA_VERSION`: one number, because one ``avsa preprocess`` run writes a
dataset's samples and its manifest together. Writers build the records and serialise them with
``to_json``; readers parse with ``from_json``, which checks the version. An older version this code
can still read is migrated on reading; anything else raises :class:`SchemaError` naming the file, the
version found, the one expected and the command that rewrites the dataset.

Migrations, version -> the current one:

- 1: samples drop ``sounds`` (one intensity direction per 0.5-s segment of the clip, which no reader
  used: the loader finds the sound peaks of its own audio window); manifests written before dataset
  layouts get layout ``files``, and the shard and run fields recorded later their defaults.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 2
OLDEST_READABLE = 1  # older documents (or ones without a version) are refused, not migrated
EXTENSIONS = ("mp4", "flac", "json")  # members of every sample, in tar order
MANIFEST_NAME = "manifest.json"
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov")
AUDIO_SIDECAR_SUFFIXES = (".flac", ".wav")

InputStatus = Literal["accepted", "rejected"]
INPUT_ACCEPTED: InputStatus = "accepted"
INPUT_REJECTED: InputStatus = "rejected"
REWRITE = "re-run `avsa preprocess --input SOURCE --output URL` to rewrite it"


class SchemaError(ValueError):
    """A document this code cannot read: wrong or missing schema version. ``fix`` says what rewrites
    it (default: for a training dataset, ``avsa preprocess``)."""

    def __init__(
        self, where: str, found: object, expected: int = SCHEMA_VERSION, fix: str | None = None
    ) -> None:
        self.where, self.found, self.expected = where, found, expected
        if fix is None and isinstance(found, int) and found > expected:
            fix = (
                "it was written by a newer avsa: read it with that version, or write the dataset again "
                "with this one into another --output (`avsa preprocess --input SOURCE --output NEW`)"
            )
        elif fix is None:
            fix = f"it predates the versions this avsa migrates ({OLDEST_READABLE}..{expected}): {REWRITE}"
        super().__init__(f"{where}: schema_version {found!r}, expected {expected}; {fix}")


def _version(data: dict[str, Any], where: str) -> int:
    """The ``schema_version`` of a parsed document, if this code reads it (else :class:`SchemaError`)."""
    found = data.get("schema_version")
    if not isinstance(found, int) or not OLDEST_READABLE <= found <= SCHEMA_VERSION:
        raise SchemaError(where, found)
    return found


def _parse(text: str | bytes, where: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise SchemaError(where, None)
    return data


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


def direction_deg(azimuth: float, elevation: float) -> tuple[float, float]:
    """A direction in radians as the JSON pair (azimuth, elevation) in degrees, rounded to 0.01°."""
    return round(float(azimuth) * 57.29577951308232, 2), round(float(elevation) * 57.29577951308232, 2)


# ----- the sample JSON ---------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoStream:
    """The sample's video: equirect frames of ``width`` × ``height`` pixels in ``codec``."""

    width: int
    height: int
    codec: str
    projection: str = "equirect"


@dataclass(frozen=True)
class AudioStream:
    """The sample's FOA: ``channels`` AmbiX channels at ``sample_rate`` Hz; ``input_format`` is what
    the input's channels were before conversion (``ambix`` or ``fuma``)."""

    sample_rate: int
    input_format: str
    channels: int = 4
    format: str = "ambix"


@dataclass(frozen=True)
class DetectedObject:
    """An object a detector found in the clip (a viewpoint candidate of the ``objects`` sampler).

    ``direction`` is (azimuth°, elevation°) of its centre, ``size_deg`` its angular size in degrees,
    ``time_s`` seconds into the clip of the frame it was found in, ``score`` the detector's in [0, 1].
    """

    label: str
    score: float
    direction: tuple[float, float]
    size_deg: float
    time_s: float
    detector: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectedObject:
        return cls(**{**data, "direction": tuple(data["direction"])})


@dataclass(frozen=True)
class DatasetOrigin:
    """Where a clip of a dataset layout (``avsa preprocess --layout``) comes from: the recording's
    ``stem``, its ``split``, and STARSS23's ``fold`` and ``room`` (-1 where the layout has none)."""

    layout: str
    stem: str
    split: str
    fold: int = -1
    room: int = -1


@dataclass(frozen=True)
class SampleMeta:
    """The ``KEY.json`` of one sample.

    ``start_s`` and ``duration_s`` are seconds into the source; ``fps`` frames per second.
    ``objects`` are best first. ``dataset`` and ``labels`` are set only for inputs of a dataset layout:
    ``labels`` (STARSS23) are the clip's events as rows ``[frame, class, source, azimuth°, elevation°
    (, distance m)]``, ``frame`` in 100-ms label frames from the clip's start, a frame repeated per
    overlapping event (:func:`dataloading.dcase.clip_rows`). No ``labels`` (None, absent in the JSON)
    means unlabelled, ``[]`` labelled silent.
    """

    key: str
    source: str
    start_s: float
    duration_s: float
    fps: int
    video: VideoStream
    audio: AudioStream
    objects: tuple[DetectedObject, ...]
    detector: str
    labels: list[list[float]] | None = None
    dataset: DatasetOrigin | None = None

    def to_json(self) -> bytes:
        """The JSON document (keys sorted, so the bytes are a function of the sample only)."""
        data = asdict(self)
        for optional in ("labels", "dataset"):  # absent rather than null: "no labels" is not "[]"
            if data[optional] is None:
                del data[optional]
        return json.dumps({"schema_version": SCHEMA_VERSION, **data}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "sample JSON") -> SampleMeta:
        """Parse a ``KEY.json`` (``where`` names it in errors); raises :class:`SchemaError` for a version
        this code does not read, and KeyError/TypeError for a document that lacks fields."""
        data = _parse(text, where)
        _version(data, where)
        dataset = data.get("dataset")
        return cls(
            key=data["key"],
            source=data["source"],
            start_s=float(data["start_s"]),
            duration_s=float(data["duration_s"]),
            fps=int(data["fps"]),
            video=VideoStream(**data["video"]),
            audio=AudioStream(**data["audio"]),
            objects=tuple(DetectedObject.from_dict(o) for o in data["objects"]),
            detector=data["detector"],
            labels=data.get("labels"),
            dataset=None if dataset is None else DatasetOrigin(**dataset),
        )  # version 1's `sounds` is left behind: the migration to 2


# ----- the manifest ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What determines the samples of a run (a resumed run must have the same): the input spec and
    ``layout``, clips of ``clip_seconds`` seconds, at most ``shard_size`` per shard, ``video_size``
    (width, height) pixels at ``fps`` in ``codec`` with a keyframe every ``gop`` frames, audio at
    ``audio_rate`` Hz read as ``input_format``, objects found by ``detector``."""

    input: str
    clip_seconds: float
    shard_size: int
    fps: int
    codec: str
    gop: int
    audio_rate: int
    input_format: str
    detector: str
    video_size: tuple[int, int]
    layout: str = "files"  # version 1 manifests written before layouts have none: they were files

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        return cls(**{**data, "video_size": tuple(data["video_size"])})


@dataclass(frozen=True)
class ShardEntry:
    """A finished shard: ``samples`` clips with these ``keys`` in tar order, ``bytes`` and ``sha256``
    of the tar, ``idx_bytes`` of its DALI index; ``inputs`` input URL -> clips of it in the shard, and
    ``node`` the address of the Ray node whose actor wrote it (both set by the driver; empty in
    version 1 manifests written before they were recorded)."""

    samples: int
    bytes: int
    sha256: str
    idx_bytes: int
    keys: list[str] = field(default_factory=list)
    inputs: dict[str, int] = field(default_factory=dict)
    node: str = ""


@dataclass
class InputEntry:
    """One input's fate. ``reason`` says why it was rejected; an accepted one has its ``duration_s``
    (seconds), the ``clips`` made of it, the ``shards`` holding them, the ``failed_clips`` and, when some
    failed, the first ``error``. An accepted input none of whose clips could be made ends up rejected."""

    status: InputStatus
    reason: str | None = None
    duration_s: float | None = None
    clips: int = 0
    shards: list[str] = field(default_factory=list)
    failed_clips: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Its JSON object: ``duration_s`` and ``error`` are left out where they do not apply."""
        data = asdict(self)
        return {k: v for k, v in data.items() if v is not None or k == "reason"}


@dataclass
class RunInfo:
    """The bookkeeping of the run that wrote the manifest last: when it ``started`` (Unix time), its
    wall ``seconds``, ``actors``, seconds spent probing (actor start-up included), CPU seconds of the
    shards, shard statuses -> count, shards written per node, and shards given out again. The defaults
    stand in for what version 1 manifests of earlier runs did not record yet."""

    started: float
    seconds: float
    actors: int
    probe_seconds: float = 0.0
    shard_cpu_seconds: float = 0.0
    shards: dict[str, int] = field(default_factory=dict)
    shards_by_node: dict[str, int] = field(default_factory=dict)
    shards_given_out_again: int = 0


@dataclass
class Manifest:
    """``manifest.json``: the run's settings, every finished shard (by name), every input (by URL), and
    the last run's bookkeeping. ``written_with`` is the schema version of the document it was read
    from (older ones are migrated on reading); it is not written: :meth:`to_json` writes the current."""

    settings: Settings
    shards: dict[str, ShardEntry] = field(default_factory=dict)
    inputs: dict[str, InputEntry] = field(default_factory=dict)
    run: RunInfo | None = None
    written_with: int = field(default=SCHEMA_VERSION, compare=False)

    def totals(self) -> dict[str, int]:
        """Counts that must agree: accepted + rejected == inputs, samples == sum over shards."""
        statuses = [entry.status for entry in self.inputs.values()]
        return {
            "inputs": len(statuses),
            "accepted": statuses.count(INPUT_ACCEPTED),
            "rejected": statuses.count(INPUT_REJECTED),
            "shards": len(self.shards),
            "samples": sum(s.samples for s in self.shards.values()),
            "bytes": sum(s.bytes for s in self.shards.values()),
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (JSON types only: lists, not tuples), shards and inputs sorted by name, with
        the :meth:`totals`."""
        data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "settings": asdict(self.settings) | {"video_size": list(self.settings.video_size)},
            "shards": {name: asdict(s) for name, s in sorted(self.shards.items())},
            "inputs": {url: e.to_dict() for url, e in sorted(self.inputs.items())},
            "totals": self.totals(),
        }
        return data | ({"run": asdict(self.run)} if self.run else {})

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1).encode()

    @classmethod
    def from_json(cls, text: str | bytes, where: str = MANIFEST_NAME) -> Manifest:
        """Parse a manifest (``where`` names it in errors), migrating an older readable version; raises
        :class:`SchemaError` for a version this code does not read."""
        data = _parse(text, where)
        version = _version(data, where)
        run = data.get("run")
        return cls(
            settings=Settings.from_dict(data["settings"]),
            shards={name: ShardEntry(**s) for name, s in data["shards"].items()},
            inputs={url: InputEntry(**e) for url, e in data["inputs"].items()},
            run=RunInfo(**run) if run else None,
            written_with=version,
        )


# ----- shard results (actor -> driver, in memory) -------------------------------------------------
ShardStatus = Literal["written", "skipped", "empty", "error"]


@dataclass(frozen=True)
class ShardResult:
    """What making shard ``name`` came to: ``written`` (``entry`` is its record, without the driver's
    ``inputs`` and ``node``), ``skipped`` (already there with the recorded checksum), ``empty`` (no
    clip could be made) or ``error`` (every attempt failed: ``error`` says why). ``written`` maps input
    URL -> clip indices made, ``failed`` input URL -> why its remaining clips were lost; ``pid`` and
    ``node`` say which actor process on which Ray node did it, in ``seconds`` wall and ``cpu_seconds``."""

    name: str
    status: ShardStatus
    entry: ShardEntry | None = None
    written: dict[str, list[int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    pid: int | None = None
    node: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0
