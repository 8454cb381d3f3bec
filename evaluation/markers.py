"""Durable per-checkpoint evaluation markers, stored as tags on the originating MLflow run.

One tag per checkpoint, ``eval.step_00001000``, holding JSON::

    running  owner (host:pid), attempt, lease_until (unix s, renewed by a heartbeat), eval_run
    done     attempt, eval_run, seconds
    failed   attempt, eval_run, reason

No tag means queued. A ``running`` marker whose lease ran out, or whose owner is a dead process on
this host, belongs to an interrupted evaluation and may be claimed again; ``done`` and ``failed``
are final (a broken checkpoint stays broken: rerun it by hand with ``avsa eval``).

The trainer's retention (:mod:`trainer.retention`) relies on that: it deletes a checkpoint only once
its marker is final, since the service reads a checkpoint only between its claim and that marker.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from typing import Literal

import psutil

from trainer.retention import marker_key as marker_key  # the trainer's retention reads the same tags

State = Literal["running", "done", "failed"]
REASON_CHARS = 2000  # MLflow tag values are capped; a traceback's last lines say enough


def this_owner() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class Marker:
    """The evaluation state of one checkpoint (see the module docstring)."""

    state: State
    attempt: int
    owner: str = ""
    lease_until: float = 0.0  # unix seconds
    eval_run: str = ""
    seconds: float = 0.0
    reason: str = ""

    def to_tag(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in ("", 0.0)})

    @classmethod
    def from_tag(cls, value: str) -> Marker:
        return cls(**json.loads(value))

    def stale(self, now: float | None = None) -> bool:
        """True for a ``running`` marker nobody is working on any more: its lease expired, or its
        owner was a process on this host that no longer exists (a restart need not wait the lease out)."""
        if self.state != "running":
            return False
        if (now if now is not None else time.time()) > self.lease_until:
            return True
        host, _, pid = self.owner.rpartition(":")
        return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
