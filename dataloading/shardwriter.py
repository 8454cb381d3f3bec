"""Write one WebDataset tar shard, its DALI index and checksum, and publish them atomically.

The shard is assembled in a local temporary file (so a crash never leaves half a shard at its final
name), then the index and the tar are uploaded with :func:`dataloading.storage.upload_atomic`:
index first, so whenever a tar is visible under its final name its index is too.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from types import TracebackType

from dataloading.config import StorageConfig
from dataloading.schema import EXTENSIONS, ShardEntry
from dataloading.storage import filesystem, upload_atomic, write_bytes_atomic

DALI_INDEX_VERSION = "v1.2"
# Fixed member metadata keeps the tar bytes a function of the samples only.
_MTIME = 0
_MODE = 0o444


def dali_index(tar_path: str) -> str:
    """The DALI ``wds2idx`` index (format v1.2) of a local tar.

    First line ``v1.2 N`` (N samples); then per sample, for each member in tar order,
    ``ext data_offset size filename`` where data_offset is where the member's bytes start
    (header offset + header size). DALI rejects lines without the file name.
    """
    samples: list[list[str]] = []
    last_key = None
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key, ext = base.split(".", 1)
            if key != last_key:
                samples.append([])
                last_key = key
            samples[-1].append(f"{ext} {member.offset_data} {member.size} {member.name}")
    lines = [f"{DALI_INDEX_VERSION} {len(samples)}", *(" ".join(parts) for parts in samples)]
    return "\n".join(lines) + "\n"


def sha256_file(path: str, chunk: int = 8 << 20) -> str:
    """Hex SHA-256 of a local file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_url(url: str, storage: StorageConfig | None = None) -> str | None:
    """Hex SHA-256 of the object at ``url``, or None if it does not exist."""
    fs, path = filesystem(url, storage)
    if not fs.exists(path):
        return None
    digest = hashlib.sha256()
    with fs.open(path, "rb", block_size=8 << 20) as fh:
        while block := fh.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


class ShardWriter:
    """Collect samples into a local tar; :meth:`publish` uploads it with its index.

    Members of a sample are written in :data:`EXTENSIONS` order so readers see complete samples.
    """

    def __init__(self, tmp_dir: str | None = None) -> None:
        fd, self.path = tempfile.mkstemp(prefix="avsa-shard-", suffix=".tar", dir=tmp_dir)
        os.close(fd)
        self._tar = tarfile.open(self.path, "w:", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed in publish/discard
        self.keys: list[str] = []

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """Append sample ``key`` with ``members`` (extension -> bytes; every one of :data:`EXTENSIONS`)."""
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        if key in self.keys:
            raise ValueError(f"duplicate sample key {key!r} in one shard")
        missing = set(EXTENSIONS) - set(members)
        if missing:
            raise ValueError(f"sample {key!r} lacks {sorted(missing)}")
        for ext in EXTENSIONS:
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), _MTIME, _MODE
            self._tar.addfile(info, io.BytesIO(data))
        self.keys.append(key)

    def publish(self, url_stem: str, storage: StorageConfig | None = None) -> ShardEntry:
        """Close the tar and upload ``<url_stem>.idx`` then ``<url_stem>.tar``; returns its manifest
        record (without ``inputs`` and ``node``: the driver knows those)."""
        self._tar.close()
        index = dali_index(self.path).encode()
        info = ShardEntry(
            samples=len(self.keys),
            bytes=os.path.getsize(self.path),
            sha256=sha256_file(self.path),
            idx_bytes=len(index),
            keys=list(self.keys),
        )
        write_bytes_atomic(f"{url_stem}.idx", index, storage)
        upload_atomic(self.path, f"{url_stem}.tar", storage)
        return info

    def discard(self) -> None:
        """Remove the local temporary tar (always safe to call)."""
        if not self._tar.closed:
            self._tar.close()
        if os.path.exists(self.path):
            os.remove(self.path)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.discard()
