"""Graceful preemption: on SIGTERM every rank finishes its step, writes a checkpoint and exits 0.

SIGTERM is what Kubernetes, Ray's autoscaler and spot reclaims send before they kill. The first one on
any rank sets :attr:`Preemption.requested`; the training loop shares the flag with the other ranks by a
:class:`StopVote` after every step, so all of them stop after the same step (the one after the SIGTERM
at the latest), checkpoint it together and return (the MLflow run is ended as KILLED and tagged
``avsa.preempted``). ``--resume auto`` then continues.

It must not hang: from the first SIGTERM (or from the step at which a rank learns of a peer's) each rank
has ``grace_s`` seconds; when they run out, or at a second SIGTERM, the process exits at once with
status 143 (128 + SIGTERM), whatever it is doing. Both are noticed by a watcher thread through
:func:`signal.set_wakeup_fd`, so they work even while the main thread is stuck in a collective whose
peer is gone (Python runs signal handlers only between bytecodes of the main thread).

Only the main thread can install signal handlers. Under Ray Train the training function runs in
another thread of the worker actor: there Ray owns SIGTERM, and a lost or preempted worker is
handled by Ray's restart and the elastic resume (see the README).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

EXIT_AT_ONCE = 128 + signal.SIGTERM  # the status a shell reports for a process killed by SIGTERM
_STOP = 0  # what __exit__ writes to the watcher's pipe; signal numbers start at 1


class Preemption:
    """SIGTERM handling for one rank (see the module docstring); use as a context manager."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.requested = False
        self.installed = False
        self._signals = 0
        self._deadline: threading.Timer | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Preemption:
        if threading.current_thread() is not threading.main_thread():
            log.debug("not the main thread: SIGTERM is left to the launcher")
            return self
        self._read, write = os.pipe()
        os.set_blocking(write, False)
        self._write = write
        self._old_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._old_handler = signal.signal(signal.SIGTERM, self._handler)
        self._watcher = threading.Thread(target=self._watch, name="preemption-watcher", daemon=True)
        self._watcher.start()
        self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.installed:
            return
        signal.signal(signal.SIGTERM, self._old_handler)
        signal.set_wakeup_fd(self._old_wakeup)
        # A byte no signal number has, not end-of-file: processes forked meanwhile (loader workers,
        # which live as long as the loader) hold copies of the write end, so closing ours ends nothing.
        os.write(self._write, bytes([_STOP]))
        os.close(self._write)
        self._watcher.join()
        os.close(self._read)
        with self._lock:
            if self._deadline is not None:
                self._deadline.cancel()
        self.installed = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True  # in the main thread, between two bytecodes: the loop sees it next step

    def _watch(self) -> None:
        while data := os.read(self._read, 64):
            for signum in data:
                if signum == _STOP:
                    return
                if signum != signal.SIGTERM:
                    continue
                self._signals += 1
                if self._signals > 1:
                    _exit_now("a second SIGTERM")
                self.requested = True
                log.warning("SIGTERM: finishing this step, then checkpointing (%.0f s grace)", self.grace_s)
                self.begin()

    def begin(self) -> None:
        """Start this rank's grace period (at its first SIGTERM, or when it learns a peer got one)."""
        with self._lock:
            if self._deadline is None and self.installed:
                self._deadline = threading.Timer(self.grace_s, _exit_now, ("the grace time ran out",))
                self._deadline.daemon = True
                self._deadline.start()


def _exit_now(why: str) -> None:
    # Not through logging: the main thread may hold its lock. os._exit: no cleanup may block either.
    os.write(2, f"preemption: {why}; exiting now without a checkpoint\n".encode())
    os._exit(EXIT_AT_ONCE)


class StopVote:
    """Whether any rank wants to stop, agreed by all of them one step late, so that no step waits for it.

    Each step's vote is an asynchronous all-reduce on a CPU (gloo) group, read at the next step, by when
    it has long arrived: the GPU stream is never synchronised for it. Every rank casts one vote per step,
    so all of them see the same outcome after the same step.
    """

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._group: Any = None
        if world_size > 1:
            # NCCL reduces only device tensors; the vote lives on the host. All ranks create the group.
            self._group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        self._pending: tuple[torch.Tensor, Any] | None = None

    def cast(self, stop: bool) -> bool:
        """This rank's vote after a step → whether any rank voted to stop after the step before."""
        outcome = self.close()
        flag = torch.tensor([float(stop)])
        work = dist.all_reduce(flag, group=self._group, async_op=True) if self.world_size > 1 else None
        self._pending = (flag, work)
        return outcome

    def close(self) -> bool:
        """Wait for the last vote cast (before leaving the loop) → its outcome; False if none is pending."""
        if self._pending is None:
            return False
        flag, work = self._pending
        if work is not None:
            work.wait()
        self._pending = None
        return bool(flag.item() > 0)
