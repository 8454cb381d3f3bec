"""One way to reach any storage URL: plain path, ``file://`` or ``s3://bucket/key``.

Every path in AVSA goes through :func:`filesystem`; no code path special-cases local files.
Final artifacts are written with :func:`open_atomic` (temp name, then rename or server-side
copy), so a reader never sees half an object, and a crash leaves only a temp name behind.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec
from fsspec import AbstractFileSystem

from dataloading.config import StorageConfig

TEMP_MARK = ".tmp-"  # temp objects are named "<name>.tmp-<hex>", next to the final name
# The standard AWS variable each StorageConfig credential falls back to when it is unset.
CREDENTIAL_ENV = {"access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY"}

# Every async (S3) filesystem this process resolved, held until it exits. fsspec caches them too, but
# empties its cache in a forked child (a DataLoader worker), where the parent's instance then became
# garbage and s3fs's finalizer closed the parent's aiobotocore client from the child: on the child's
# event loop ("RuntimeError: ... attached to a different loop", logged as "Task exception was never
# retrieved"), and through the child's copies of the parent's pooled sockets, which took them out of
# the epoll set the two processes share, so the parent's next S3 requests each waited out s3fs' 15 s
# read timeout. Still referenced here, an inherited instance is never finalized in the child: it stays
# unused (fsspec builds the child its own) and its socket copies close when the child exits.
_held: dict[int, AbstractFileSystem] = {}

log = logging.getLogger(__name__)


class _RetryNotice(logging.Handler):
    """Says once per outage that S3 requests are being retried: botocore retries silently (a debug line
    per retry), so a run waiting out an outage would otherwise look hung. An outage is over for this
    notice after ``QUIET_S`` seconds without a retry."""

    QUIET_S = 60.0

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last_retry = -math.inf

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if not message.startswith("Retry needed"):
            return
        now = time.monotonic()
        if now - self.last_retry > self.QUIET_S:
            log.warning(
                "the object store gave no answer or an error it may recover from; retrying with backoff for "
                "up to storage.retry_s"
                if "quota" not in message
                else "the object store keeps failing and botocore's retry quota is spent: requests fail "
                "at once until one succeeds"
            )
        self.last_retry = now


def _notice_retries() -> None:
    """Route botocore's retry lines (aiobotocore logs through the same logger) to :class:`_RetryNotice`
    alone, once per process."""
    retries = logging.getLogger("botocore.retries.standard")
    if not any(isinstance(h, _RetryNotice) for h in retries.handlers):
        retries.addHandler(_RetryNotice())
        retries.setLevel(logging.DEBUG)
        retries.propagate = False  # its debug lines reach no other handler


def retry_attempts(retry_s: float) -> int:
    """botocore ``max_attempts`` that keep retrying for about ``retry_s`` seconds in its standard mode,
    whose wait before attempt n is uniform in [0, min(2^n, 20)] s: ~8 s over the first five, then ~10 s
    each. (botocore bounds attempts, not time; its standard mode covers every transient error: no
    answer, a timeout, a dropped connection, 500/502/503/504 and throttling.)"""
    return 1 if retry_s <= 0 else 5 + math.ceil(max(retry_s - 8.0, 0.0) / 10.0)


def transient(exc: BaseException) -> bool:
    """Whether a storage error may go away by itself (the store gave no answer, dropped the connection,
    timed out, or answered 5xx / SlowDown), once :func:`retry_attempts` retries have run out."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or exc.response.get("Error", {}).get("Code") == "SlowDown"
    return isinstance(exc, ConnectionError | HTTPClientError | TimeoutError | ConnectionResetError)


def storage_options(url: str, storage: StorageConfig | None = None) -> dict[str, Any]:
    """fsspec options for ``url``: S3 endpoint and credentials from ``storage`` or the AWS env vars,
    and retries of transient errors for about ``storage.retry_s`` (:func:`retry_attempts`)."""
    if not url.startswith(("s3://", "s3a://")):
        return {}
    storage = storage or StorageConfig()
    env = os.environ
    endpoint = storage.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    retries = {"mode": "standard", "max_attempts": retry_attempts(storage.retry_s)}
    options: dict[str, Any] = {"client_kwargs": {}, "config_kwargs": {"retries": retries}}
    if endpoint:
        options["endpoint_url"] = endpoint
    key = storage.access_key_id or env.get(CREDENTIAL_ENV["access_key_id"])
    secret = storage.secret_access_key or env.get(CREDENTIAL_ENV["secret_access_key"])
    if key and secret:
        options["key"], options["secret"] = key, secret
    region = storage.region or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")
    if region:
        options["client_kwargs"]["region_name"] = region
    return options


def filesystem(url: str, storage: StorageConfig | None = None) -> tuple[AbstractFileSystem, str]:
    """Resolve ``url`` to ``(filesystem, path inside it)``; plain paths become absolute local paths.

    S3 filesystems are kept for the life of the process, so a forked loader worker leaves the parent's
    connections alone (see ``_held``).
    """
    if "://" not in url:
        url = os.path.abspath(os.path.expanduser(url))
    fs, path = fsspec.core.url_to_fs(url, **storage_options(url, storage))
    if fs.async_impl:
        _held.setdefault(id(fs), fs)
        _notice_retries()
    return fs, path


def join(url: str, *parts: str) -> str:
    """Join URL path segments with '/', keeping the scheme (``s3://b/x`` + ``y`` -> ``s3://b/x/y``)."""
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


@contextlib.contextmanager
def open_atomic(url: str, mode: str = "wb", storage: StorageConfig | None = None) -> Iterator[IO[Any]]:
    """Open ``url`` for writing so that it appears at its final name only once complete.

    Writes go to ``<url>.tmp-<random>``; on success the temp is moved to ``url`` (a rename on
    file systems, a server-side copy + delete on object stores); on error it is removed and the
    final name is untouched.
    """
    if "w" not in mode:
        raise ValueError(f"open_atomic is for writing; got mode {mode!r}")
    fs, path = filesystem(url, storage)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}{TEMP_MARK}{uuid.uuid4().hex}"
    try:
        with fs.open(tmp, mode) as fh:
            yield fh
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.rm(tmp)
        raise


def write_bytes_atomic(url: str, data: bytes, storage: StorageConfig | None = None) -> None:
    """Atomically write ``data`` to ``url`` (see :func:`open_atomic`)."""
    with open_atomic(url, "wb", storage) as fh:
        fh.write(data)


def upload_atomic(local_path: str, url: str, storage: StorageConfig | None = None) -> None:
    """Atomically copy a local file to ``url``, streaming in chunks (multipart on S3)."""
    with open(local_path, "rb") as src, open_atomic(url, "wb", storage) as dst:
        while chunk := src.read(8 << 20):
            dst.write(chunk)


def register_webdataset_opener(storage: StorageConfig | None = None) -> None:
    """Teach webdataset's ``gopen`` to stream ``s3://`` URLs through s3fs (it has no handler).

    Plain paths and ``file://`` keep webdataset's own handlers.
    """
    gopen_module = importlib.import_module("webdataset.gopen")  # the package shadows it with a function

    def gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> IO[bytes]:
        fs, path = filesystem(url, storage)
        return fs.open(path, mode, block_size=max(bufsize, 8 << 20))

    for scheme in ("s3", "s3a"):
        gopen_module.gopen_schemes[scheme] = gopen_fsspec
