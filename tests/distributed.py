"""Run a function on N CPU ranks joined by a gloo process group, for multi-rank tests.

    def check(rank: int, world_size: int, scale: float) -> float: ...   # module level (picklable)
    results = run_distributed(check, 2, 0.5)                             # [rank 0 result, rank 1 result]

Each rank is a fresh ``spawn`` process with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
(127.0.0.1) and a free ``MASTER_PORT`` in its environment (what DeepSpeed and torchrun expect), one
intra-op thread, and an initialised default gloo group that is destroyed however the function ends.
Results travel back through ``torch.save`` bytes (tensors, dicts, numbers). A rank that raises makes
``run_distributed`` raise :class:`DistributedError` with every failing rank's traceback; a rank that
hangs (e.g. its peer died inside a collective) is killed once ``timeout_s`` have passed.
"""

from __future__ import annotations

import io
import queue
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cluster.processes import free_port, set_local_rank_env


class DistributedError(RuntimeError):
    """One or more ranks failed or did not report back."""


def _rank_main(
    rank: int,
    world_size: int,
    port: int,
    timeout_s: float,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    results: mp.Queue,
) -> None:
    set_local_rank_env(rank, world_size, port)
    torch.set_num_threads(1)  # N ranks share a small machine
    try:
        timeout = timedelta(seconds=timeout_s)
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timeout)
        buf = io.BytesIO()
        torch.save(fn(rank, world_size, *args), buf)
        results.put((rank, buf.getvalue(), None))
    except BaseException:
        results.put((rank, None, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(
    fn: Callable[..., Any], world_size: int = 2, *args: Any, timeout_s: float = 120.0
) -> list[Any]:
    """Call ``fn(rank, world_size, *args)`` on ``world_size`` ranks; return the results in rank order."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(rank, world_size, port, timeout_s, fn, args, results))
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    outputs: dict[int, Any] = {}
    errors: dict[int, str] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(outputs) + len(errors) < world_size:
            try:
                rank, payload, error = results.get(timeout=1.0)
            except queue.Empty:
                # A rank killed by a signal never reports; stop waiting once none is left running.
                if time.monotonic() > deadline or all(p.exitcode is not None for p in procs):
                    break
                continue
            if error is not None:
                errors[rank] = error
            else:
                outputs[rank] = torch.load(io.BytesIO(payload), weights_only=False)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    for rank in sorted(set(range(world_size)) - outputs.keys() - errors.keys()):
        errors[rank] = f"no result (exit code {procs[rank].exitcode}, timeout {timeout_s} s)"
    if errors:
        report = "\n".join(f"--- rank {rank} ---\n{errors[rank]}" for rank in sorted(errors))
        raise DistributedError(f"{len(errors)} of {world_size} ranks failed:\n{report}")
    return [outputs[rank] for rank in range(world_size)]
