"""Reading samples from shards: shard listing, DALI index parsing, one ranged read per sample.

The DALI index (``.idx``) of every shard says where each sample's bytes are, so a sample is read with one
ranged request: a rank can start, stop and resume at any sample, and every rank gets exactly the same
number of samples however uneven the shards are. Which sample each rank reads at each position of a
training epoch is :mod:`dataloading.epoch`'s job; :class:`CompletePlan` here is the plan of a pass that
reads every sample once (evaluation, statistics).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from dataloading import seeds
from dataloading.config import StorageConfig
from dataloading.schema import MANIFEST_NAME, Manifest
from dataloading.storage import filesystem, join

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """One tar shard: its URL (the ``.idx`` sits next to it) and how many samples it holds."""

    url: str
    samples: int

    @property
    def index_url(self) -> str:
        return self.url[: -len(".tar")] + ".idx" if self.url.endswith(".tar") else self.url + ".idx"


@dataclass(frozen=True)
class IndexEntry:
    """One sample of a shard: its key and, per member extension, (byte offset of the data, size)."""

    key: str
    members: dict[str, tuple[int, int]]

    @property
    def span(self) -> tuple[int, int]:
        """(start, end) byte range covering all members; they are contiguous in the tar."""
        start = min(offset for offset, _ in self.members.values())
        return start, max(offset + size for offset, size in self.members.values())


@dataclass(frozen=True)
class SampleRef:
    """Sample ``index`` of shard number ``shard`` (an index into the shard list)."""

    shard: int
    index: int


def parse_index(text: str) -> list[IndexEntry]:
    """Parse a DALI webdataset index (v1.2: ``ext offset size filename`` per member) into entries.

    Raises ValueError on a malformed index, so a damaged one is reported rather than misread.
    """
    lines = text.splitlines()
    header = lines[0].split() if lines else []
    if len(header) != 2 or not header[0].startswith("v1."):
        raise ValueError(f"not a DALI webdataset index (header {lines[:1]})")
    entries = []
    for line in lines[1 : 1 + int(header[1])]:
        fields = line.split()
        if not fields or len(fields) % 4:
            raise ValueError(f"malformed index line {line!r}")
        members = {}
        key = ""
        for i in range(0, len(fields), 4):
            ext, offset, size, name = fields[i : i + 4]
            members[ext] = (int(offset), int(size))
            key = name.rsplit("/", 1)[-1].split(".", 1)[0]
        entries.append(IndexEntry(key, members))
    if len(entries) != int(header[1]):
        raise ValueError(f"index announces {header[1]} samples but lists {len(entries)}")
    return entries


def _index_count(url: str, storage: StorageConfig | None) -> int:
    """Samples in a shard according to the first line of its index (0 if the index is unreadable)."""
    fs, path = filesystem(url, storage)
    try:
        with fs.open(path, "rb") as fh:
            return int(fh.readline().split()[1])
    except (OSError, ValueError, IndexError) as exc:
        log.warning("skipping shard index %s: %s", url, exc)
        return 0


def read_manifest(url: str, storage: StorageConfig | None = None) -> Manifest | None:
    """The ``manifest.json`` of the shard dataset at ``url`` (None where it has none), migrated from an
    older schema where it is one; raises :class:`dataloading.schema.SchemaError` naming the file when
    its schema is not one this code reads."""
    manifest_url = join(url, MANIFEST_NAME)
    fs, path = filesystem(manifest_url, storage)
    return Manifest.from_json(fs.cat_file(path), manifest_url) if fs.exists(path) else None


def list_shards(url: str, storage: StorageConfig | None = None) -> list[Shard]:
    """The shards of a dataset URL (a directory, local or ``s3://``), sorted by name.

    Sample counts come from ``manifest.json`` when there is one (its schema version checked: see
    :func:`read_manifest`), else from each shard's index. Raises FileNotFoundError with the URL if there
    is nothing to read, so a wrong path fails at once.
    """
    fs, path = filesystem(url, storage)
    base = url.rstrip("/")
    manifest = read_manifest(url, storage)
    if manifest is not None:
        shards = [Shard(join(base, f"{name}.tar"), entry.samples) for name, entry in manifest.shards.items()]
    else:
        try:
            names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if p.endswith(".tar"))
        except FileNotFoundError:
            names = []
        shards = [Shard(join(base, name), 0) for name in names]
        shards = [Shard(s.url, _index_count(s.index_url, storage)) for s in shards]
    shards = sorted((s for s in shards if s.samples > 0), key=lambda s: s.url)
    if not shards:
        raise FileNotFoundError(f"no readable shards at {url!r} (no manifest.json, no .tar with a .idx)")
    return shards


class BadSample(Exception):
    """A sample that cannot be used; ``str(exc)`` says why (for the log and the counters)."""

    def __init__(self, reason: str, key: str = "?", truncated: bool = False) -> None:
        super().__init__(reason)
        self.key, self.truncated = key, truncated


class ShardReader:
    """Reads the members of a sample with one ranged request, using the shard's parsed index.

    Indexes are fetched once per shard and kept (a few KB each). Works the same for local files and
    object storage: ``fs.cat_file(path, start, end)`` is a ranged GET on S3.
    """

    def __init__(self, shards: list[Shard], storage: StorageConfig | None = None) -> None:
        self.shards, self.storage = shards, storage
        self._indexes: dict[int, list[IndexEntry] | BadSample] = {}

    def index(self, shard: int) -> list[IndexEntry]:
        """The parsed index of shard number ``shard``; raises BadSample if it cannot be read."""
        if shard not in self._indexes:
            url = self.shards[shard].index_url
            try:
                fs, path = filesystem(url, self.storage)
                self._indexes[shard] = parse_index(fs.cat_file(path).decode())
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                self._indexes[shard] = BadSample(f"unreadable index {url}: {exc}")
        entries = self._indexes[shard]
        if isinstance(entries, BadSample):
            raise entries
        return entries

    def read(self, ref: SampleRef) -> tuple[str, dict[str, bytes]]:
        """(key, {extension: bytes}) of a sample; raises BadSample when missing or truncated."""
        entries = self.index(ref.shard)
        if ref.index >= len(entries):
            raise BadSample(f"index lists {len(entries)} samples, the manifest more")
        entry = entries[ref.index]
        start, end = entry.span
        fs, path = filesystem(self.shards[ref.shard].url, self.storage)
        try:
            data = fs.cat_file(path, start=start, end=end)
        except OSError as exc:
            raise BadSample(f"read failed: {exc}", entry.key) from exc
        if len(data) < end - start:
            raise BadSample(
                f"shard truncated at byte {start + len(data)}, sample ends at {end}",
                entry.key,
                truncated=True,
            )
        return entry.key, {ext: data[o - start : o - start + n] for ext, (o, n) in entry.members.items()}


class CompletePlan:
    """Every sample of a dataset exactly once, in shard order: for evaluation and statistics, where a
    wrap-around or a substitute would count a sample twice. Positions past the end raise IndexError.

    With ``limit`` > 0, that many samples spread over the whole dataset (a subset drawn by ``seed``,
    kept in shard order). A sample's randomness (window, viewpoints) is seeded by ``seed`` and the
    sample's place in the dataset (shard, index), so a subset draws exactly what the whole set would.
    """

    def __init__(self, shards: list[Shard], seed: int = 0, limit: int = 0) -> None:
        self.shards, self.seed = shards, seed
        refs = [SampleRef(s, i) for s, shard in enumerate(shards) for i in range(shard.samples)]
        if 0 < limit < len(refs):
            keep = np.sort(
                np.random.default_rng([seed, seeds.DATASET_SUBSET]).choice(len(refs), limit, replace=False)
            )
            refs = [refs[i] for i in keep]
        self._refs = refs

    def __len__(self) -> int:
        return len(self._refs)

    def __getitem__(self, position: int) -> SampleRef:
        if not 0 <= position < len(self._refs):
            raise IndexError(position)
        return self._refs[position]

    def sample_rng(self, position: int) -> np.random.Generator:
        """The generator for everything random about the sample at ``position``, seeded by its identity."""
        ref = self._refs[position]
        return np.random.default_rng([self.seed, ref.shard, ref.index, seeds.DATASET_SAMPLE])
