"""Storage URLs: plain paths, file:// and s3:// (real SeaweedFS), atomic writes, webdataset streaming,
S3 reads from forked loader workers."""

from __future__ import annotations

import gc
import io
import logging
import os
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec.asyn
import pytest
import s3fs
from torch.utils.data import DataLoader, IterableDataset

from cluster.stack import Stack
from dataloading import storage
from dataloading.config import StorageConfig


def make_tar(samples: dict[str, dict[str, bytes]]) -> bytes:
    """A WebDataset-style tar: one member per (key, extension)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for key, parts in samples.items():
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("scheme", ["plain", "file"])
def test_local_urls_resolve_to_the_same_file(tmp_path: Path, scheme: str) -> None:
    target = tmp_path / "a" / "b.bin"
    url = str(target) if scheme == "plain" else f"file://{target}"
    storage.write_bytes_atomic(url, b"payload")
    fs, path = storage.filesystem(url)
    assert fs.cat_file(path) == b"payload" and target.read_bytes() == b"payload"


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _, path = storage.filesystem("shards/x.tar")
    assert path == str(tmp_path / "shards" / "x.tar")


def test_failed_atomic_write_leaves_neither_final_nor_temp(tmp_path: Path) -> None:
    url = str(tmp_path / "out.tar")
    with pytest.raises(RuntimeError), storage.open_atomic(url) as fh:
        fh.write(b"half a shard")
        raise RuntimeError("writer died")
    assert os.listdir(tmp_path) == []


def test_atomic_write_is_invisible_until_closed(tmp_path: Path) -> None:
    url = str(tmp_path / "out.tar")
    with storage.open_atomic(url) as fh:
        fh.write(b"x" * 1000)
        fh.flush()
        assert not Path(url).exists()  # a reader sees nothing at the final name yet
    assert Path(url).read_bytes() == b"x" * 1000


def test_s3_settings_come_from_config_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "envkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    from_env = storage.storage_options("s3://b/k")
    assert (from_env["endpoint_url"], from_env["key"], from_env["secret"]) == (
        "http://env:1",
        "envkey",
        "envsecret",
    )
    cfg = StorageConfig(endpoint_url="http://cfg:2", access_key_id="k", secret_access_key="s", region="eu-x")
    from_cfg = storage.storage_options("s3://b/k", cfg)
    assert (from_cfg["endpoint_url"], from_cfg["key"], from_cfg["client_kwargs"]["region_name"]) == (
        "http://cfg:2",
        "k",
        "eu-x",
    )
    assert storage.storage_options("/local/path") == {}


@pytest.mark.integration
def test_s3_multipart_round_trip_and_range_reads(stack: Stack) -> None:
    url = f"s3://{stack.cfg.bucket}/storage-test/big.bin"
    payload = os.urandom(13 << 20)  # > 2 parts of s3fs' 5 MiB multipart blocks
    with storage.open_atomic(url, storage=stack.storage()) as fh:
        for start in range(0, len(payload), 1 << 20):
            fh.write(payload[start : start + (1 << 20)])
    fs, path = storage.filesystem(url, stack.storage())
    assert fs.size(path) == len(payload)
    assert fs.cat_file(path, start=7 << 20, end=(7 << 20) + 12345) == payload[7 << 20 : (7 << 20) + 12345]
    with fs.open(path, "rb", block_size=1 << 20) as fh:
        fh.seek(len(payload) - 100)
        assert fh.read() == payload[-100:]
    assert not [p for p in fs.ls(path.rsplit("/", 1)[0]) if storage.TEMP_MARK in p]


@pytest.mark.integration
def test_s3_wrong_secret_is_refused(stack: Stack) -> None:
    good = stack.storage()
    storage.write_bytes_atomic(f"s3://{stack.cfg.bucket}/auth/x", b"1", good)
    for key, secret in [(good.access_key_id, "not-the-secret"), ("UNKNOWNKEY", good.secret_access_key)]:
        bad = s3fs.S3FileSystem(
            key=key, secret=secret, endpoint_url=good.endpoint_url, skip_instance_cache=True
        )
        with pytest.raises(PermissionError):
            bad.cat_file(f"{stack.cfg.bucket}/auth/x")
        with pytest.raises(PermissionError):
            bad.pipe_file(f"{stack.cfg.bucket}/auth/y", b"2")
    anonymous = s3fs.S3FileSystem(anon=True, endpoint_url=good.endpoint_url, skip_instance_cache=True)
    with pytest.raises(PermissionError):
        anonymous.cat_file(f"{stack.cfg.bucket}/auth/x")


@pytest.mark.integration
def test_webdataset_streams_s3_shards_through_our_opener(stack: Stack) -> None:
    import webdataset as wds

    samples = {
        f"clip{i:03d}": {"json": f'{{"i": {i}}}'.encode(), "bin": os.urandom(1000 + i)} for i in range(20)
    }
    url = f"s3://{stack.cfg.bucket}/wds/shard-000000.tar"
    storage.write_bytes_atomic(url, make_tar(samples), stack.storage())
    storage.register_webdataset_opener(stack.storage())
    seen = {s["__key__"]: s["bin"] for s in wds.WebDataset(url, shardshuffle=False)}
    assert seen == {k: v["bin"] for k, v in samples.items()}


async def _collect_garbage() -> None:
    gc.collect()


class _ReadInWorker(IterableDataset):
    """Each loader worker reads a byte range of ``url`` (as a shard reader does) and yields its length."""

    def __init__(self, url: str, storage_cfg: StorageConfig) -> None:
        self.url, self.storage_cfg = url, storage_cfg

    def __iter__(self) -> Iterator[int]:
        # The worker inherited pytest's log handlers, which write into the parent's memory copy: log to
        # the process's stderr instead, where the test reads it (as a service's terminal would show it).
        to_stderr = logging.StreamHandler(sys.stderr)
        to_stderr.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(to_stderr)
        fs, path = storage.filesystem(self.url, self.storage_cfg)
        data = fs.cat_file(path, start=0, end=1024)
        # Garbage is collected wherever allocation triggers it; in the demo's evaluation worker it was
        # on the fsspec IO thread, while its S3 client was being built. Collect there, every time.
        fsspec.asyn.sync(fs.loop, _collect_garbage)
        yield len(data)


@pytest.mark.integration
def test_forked_workers_leave_the_parents_s3_session_alone(
    stack: Stack, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """The evaluation service's pattern: a heartbeat thread writes MLflow tags while the main thread
    reads S3 and forked DataLoader workers read S3 too. Nothing is logged at ERROR in either process,
    and the parent's next S3 reads do not wait out s3fs' 15 s read timeout."""
    from mlflow.tracking import MlflowClient

    s3 = stack.storage()
    url = f"s3://{stack.cfg.bucket}/fork-test/{uuid.uuid4().hex}.bin"
    payload = os.urandom(64 << 10)
    storage.write_bytes_atomic(url, payload, s3)
    client = MlflowClient(stack.client_env()["MLFLOW_TRACKING_URI"])
    run_id = client.create_run(client.create_experiment(f"fork-test-{uuid.uuid4().hex[:8]}")).info.run_id
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(0.1):
            client.set_tag(run_id, "lease", str(time.time()))

    def read() -> bytes:
        fs, path = storage.filesystem(url, s3)  # resolved per use, as every reader in the project does
        return fs.cat_file(path)

    gc.collect()  # s3fs instances other tests made directly (not through storage) are not this test's
    caplog.set_level(logging.INFO)
    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        for _ in range(2):  # the loader forks new workers every pass
            assert read() == payload
            assert list(DataLoader(_ReadInWorker(url, s3), batch_size=None, num_workers=2)) == [1024, 1024]
            started = time.monotonic()
            assert all(read() == payload for _ in range(4))
            assert time.monotonic() - started < 10, "the parent's S3 connections were closed by a worker"
    finally:
        stop.set()
        beat.join()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    stderr = capfd.readouterr().err
    assert "ERROR" not in stderr and "Traceback" not in stderr, stderr
