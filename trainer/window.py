"""Training metrics between two logging steps, kept on the device until they are logged.

Reading a metric on the host waits for the device, and averaging it over ranks is a collective. Both
happen once per ``tracking.log_every`` steps: each step adds its metrics to the window's sums, and the
logging step reduces them in one all-reduce, which also measures the throughput on the wall clock.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist


def mean_over_ranks(values: dict[str, torch.Tensor], world_size: int) -> dict[str, float]:
    """Average scalar tensors over ranks in one all-reduce (gloo has no AVG, so SUM / world size)."""
    stacked = torch.stack([v.detach().float() for v in values.values()])
    if world_size > 1:
        dist.all_reduce(stacked)
    return dict(zip(values, (stacked / world_size).tolist(), strict=True))


class MetricWindow:
    """The sums of each step's scalar metrics since the last :meth:`summary`, on the device.

    ``clips_per_step`` is the global batch. A step's metrics include ``data_s``, the seconds it waited
    for its batch.
    """

    def __init__(self, world_size: int, clips_per_step: int) -> None:
        self.world_size, self.clips_per_step = world_size, clips_per_step
        self._restart()

    def _restart(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        """One step's metrics (scalar tensors, on any device; not read here)."""
        for key, value in metrics.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.steps += 1

    def summary(self) -> dict[str, float]:
        """Each metric's mean over the window's steps and every rank, ``clips_per_s`` on the wall clock
        since the window began (data, logging and checkpoints included) and ``data_wait_fraction``, the
        share of that time spent waiting for batches (mean over ranks); then a new window begins."""
        if self.steps == 0:
            raise RuntimeError("no step since the last summary")
        sums = mean_over_ranks(self.sums, self.world_size)  # each rank's window sum, averaged
        data_s = sums.pop("data_s")
        means = {k: v / self.steps for k, v in sums.items()}
        elapsed = time.perf_counter() - self.started
        means["clips_per_s"] = self.clips_per_step * self.steps / elapsed
        means["data_wait_fraction"] = min(data_s / elapsed, 1.0)
        self._restart()
        return means
