"""Tracking that never blocks or kills training: an ordered outbox of MLflow operations, delivered by a
background thread that rides through server outages.

Rank 0 puts each operation (a batch of metrics, a tag, an artifact, the end of the run) in the outbox
and goes on: a put is a lock and an append. One thread sends them in order. While the server cannot be
reached (connection refused or reset, a timeout, HTTP 429 or 5xx) it keeps them, the first ``memory`` in
memory and the rest appended to a spill file, and retries with capped exponential backoff and jitter. It
says once that tracking is unreachable and once that it is back. An operation the server refuses for
good (another 4xx) is dropped with a warning, as sending it again would get the same answer.

:meth:`Outbox.close` waits at most its timeout for the rest. What is still undelivered then goes to a
backlog file that ``avsa tracking replay FILE`` (:func:`replay`) delivers later, to the same run and in
the same order.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

Record = dict[str, Any]
T = TypeVar("T")

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 15.0
REQUEST_TIMEOUT_S = 10  # per HTTP request to the server (MLflow's own default is 120 s)
BACKLOG = "backlog.jsonl"
_SPILL = "spill.jsonl"


def quick_http_failures() -> None:
    """Make MLflow's HTTP client give up on an unreachable server at once (no retries of its own, a
    10-s timeout) so that the outbox decides when to try again; a value set in the environment wins."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(REQUEST_TIMEOUT_S))


def is_transient(exc: BaseException) -> bool:
    """Whether trying again later may succeed: no answer (refused, reset, timed out) or a server-side
    error (HTTP 429, 5xx). MLflow reports a request that got no answer as an internal error (500)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status == 429 or status >= 500
    # Not every OSError: a missing file or a refused permission stays so.
    return isinstance(exc, ConnectionError | TimeoutError | requests.ConnectionError | requests.Timeout)


class Backoff:
    """Capped exponential delays with ±25 % jitter, so that many clients do not retry in step."""

    def __init__(self, first_s: float = FIRST_RETRY_S, cap_s: float = MAX_RETRY_S) -> None:
        self.first_s, self.cap_s, self.next_s = first_s, cap_s, first_s

    def delay(self) -> float:
        """Seconds to wait before the next try; each call doubles the next one, up to the cap."""
        delay, self.next_s = self.next_s, min(2 * self.next_s, self.cap_s)
        return delay * random.uniform(0.75, 1.25)

    def reset(self) -> None:
        self.next_s = self.first_s


def with_retries(call: Callable[[], T], deadline_s: float, what: str) -> T:
    """``call()``, tried again after transient failures until ``deadline_s`` seconds have passed; then
    (or at once for a permanent failure) its exception is raised."""
    backoff, start, said = Backoff(), time.monotonic(), False
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() - start > deadline_s:
                raise
            if not said:
                log.warning(
                    "tracking server unreachable while %s (%s); retrying for %.0f s",
                    what,
                    brief(exc),
                    deadline_s,
                )
                said = True
            time.sleep(backoff.delay())


def brief(exc: BaseException) -> str:
    """The first line of an exception, without MLflow's request dump."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def send(client: Any, run_id: str, record: Record) -> None:
    """Apply one outbox ``record`` to run ``run_id`` through the MLflow ``client``."""
    op = record["op"]
    if op == "metrics":
        from mlflow.entities import Metric

        metrics = [Metric(k, v, record["ts"], record["step"]) for k, v in record["values"].items()]
        client.log_batch(run_id, metrics=metrics)
    elif op == "tag":
        client.set_tag(run_id, record["key"], record["value"])
    elif op == "artifact":
        client.log_artifact(run_id, record["file"], record["dir"])
        Path(record["file"]).unlink(missing_ok=True)  # a copy kept only until it was delivered
    elif op == "end":
        client.set_terminated(run_id, record["status"])
    else:
        raise ValueError(f"unknown tracking operation {op!r}")


class Outbox:
    """The operations of one MLflow run, sent in order by a background thread (see the module doc).

    ``folder`` holds this run's spill file, the files of artifacts not yet sent, and the backlog file
    that :meth:`close` leaves when the server stays unreachable.
    """

    def __init__(self, client: Any, run_id: str, uri: str, folder: Path, memory: int = 10_000) -> None:
        self.client, self.run_id, self.uri, self.memory = client, run_id, uri, memory
        self.folder = folder / run_id
        self.folder.mkdir(parents=True, exist_ok=True)
        self._queue: deque[Record] = deque()
        self._spilled = 0  # records in the spill file not yet moved back into the queue
        self._offset = 0  # bytes of the spill file already moved back
        self._cond = threading.Condition()
        self._closing = self._stop = False
        self.down_since: float | None = None  # monotonic time of the first failure of an outage
        self.delivered = self.dropped = 0
        self.left = 0  # records written to the backlog file by close()
        self._thread = threading.Thread(target=self._run, name="tracking-outbox", daemon=True)
        self._thread.start()

    @property
    def spill_path(self) -> Path:
        return self.folder / _SPILL

    def pending(self) -> int:
        """Records not yet delivered."""
        with self._cond:
            return len(self._queue) + self._spilled

    def put(self, record: Record) -> None:
        """Queue ``record`` behind every earlier one; never waits on the server."""
        with self._cond:
            if self._spilled or len(self._queue) >= self.memory:  # once spilling, spill until drained
                with open(self.spill_path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                self._spilled += 1
            else:
                self._queue.append(record)
            self._cond.notify()

    def file(self, name: str) -> Path:
        """A path in the outbox folder for a file an ``artifact`` record will send."""
        return self.folder / name

    def _head(self) -> Record | None:
        """The oldest undelivered record (under the lock); spilled records come back in chunks."""
        if not self._queue and self._spilled:
            with open(self.spill_path, "rb") as fh:
                fh.seek(self._offset)
                for _ in range(min(self._spilled, self.memory)):
                    line = fh.readline()
                    self._offset += len(line)
                    self._spilled -= 1
                    self._queue.append(json.loads(line))
            if not self._spilled:
                self.spill_path.unlink()
                self._offset = 0
        return self._queue[0] if self._queue else None

    def _run(self) -> None:
        backoff = Backoff()
        while True:
            with self._cond:
                while not self._stop and (record := self._head()) is None:
                    if self._closing:
                        return
                    self._cond.wait()
                if self._stop:
                    return
            try:
                send(self.client, self.run_id, record)
            except Exception as exc:
                if is_transient(exc):
                    self._unreachable(exc)
                    with self._cond:
                        self._cond.wait_for(lambda: self._stop, timeout=backoff.delay())
                    continue
                self.dropped += 1
                log.warning(
                    "tracking: the server refused %s for run %s (%s); dropped",
                    record["op"],
                    self.run_id,
                    brief(exc),
                )
            else:
                self.delivered += 1
                backoff.reset()
                self._reachable()
            with self._cond:
                self._queue.popleft()

    def _unreachable(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning(
                "tracking: server %s unreachable (%s); training goes on, and the run's records are kept "
                "and sent when it is back",
                self.uri,
                brief(exc),
            )

    def _reachable(self) -> None:
        if self.down_since is not None:
            log.info(
                "tracking: server %s is back after %.0f s; sending the %d records kept",
                self.uri,
                time.monotonic() - self.down_since,
                self.pending(),
            )
            self.down_since = None

    def close(self, timeout_s: float) -> Path | None:
        """Deliver what is queued, waiting at most ``timeout_s``. Returns None when everything was
        delivered; otherwise the backlog file that holds the rest, for ``avsa tracking replay``."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            shutil.rmtree(self.folder, ignore_errors=True)
            return None
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(REQUEST_TIMEOUT_S + 5)  # a request in flight finishes or times out
        with self._cond:
            self._head()  # nothing is delivered any more: the queue and the spill file are the rest
            records = [*self._queue, *self._read_spill()]
            self.left = len(records)
            return write_backlog(self.folder / BACKLOG, self.run_id, self.uri, records)

    def _read_spill(self) -> list[Record]:
        if not self._spilled:
            return []
        with open(self.spill_path, "rb") as fh:
            fh.seek(self._offset)
            records = [json.loads(line) for line in fh]
        self.spill_path.unlink()
        return records


def write_backlog(path: Path, run_id: str, uri: str, records: list[Record]) -> Path:
    """Write ``records`` of run ``run_id`` (on ``uri``) to ``path`` (JSON lines after a header line),
    atomically; returns ``path``."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps({"run_id": run_id, "uri": uri, "records": len(records)}) + "\n")
        fh.writelines(json.dumps(r) + "\n" for r in records)
    tmp.replace(path)
    return path


def replay(path: Path, uri: str = "", deadline_s: float = 300.0) -> tuple[int, int]:
    """Deliver the backlog file at ``path`` to its run, on ``uri`` (empty: the server the run used),
    in order, retrying transient failures for up to ``deadline_s``. Returns (delivered, left); what is
    left stays in the file for another replay, and an emptied file is removed."""
    from mlflow.tracking import MlflowClient

    lines = path.read_text().splitlines()
    if not lines:
        raise ValueError(f"{path} is empty: not a tracking backlog file")
    header = json.loads(lines[0])
    records = [json.loads(line) for line in lines[1:]]
    quick_http_failures()
    client, run_id = MlflowClient(uri or header["uri"]), header["run_id"]
    start, done = time.monotonic(), 0
    try:
        for record in records:
            left = max(deadline_s - (time.monotonic() - start), 0.0)
            with_retries(lambda r=record: send(client, run_id, r), left, "replaying")
            done += 1
    finally:
        if done == len(records):
            path.unlink()
        elif done:
            write_backlog(path, run_id, header["uri"], records[done:])
    return done, len(records) - done
