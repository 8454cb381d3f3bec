"""DeepSpeed imported for training: on the right accelerator, quietly, and without what training never uses.

Every process that imports DeepSpeed goes through :func:`import_deepspeed`:

- Without CUDA, ``DS_ACCELERATOR=cpu`` is set first: DeepSpeed then takes the CPU accelerator directly
  instead of warning, in every rank, that it could not detect a GPU.
- The shared-memory all-reduce op is marked unavailable. DeepSpeed JIT-builds it on CPU at every
  process-group start (~35 s the first time on 2 cores, ~10 s of each rank's start after that, and a
  build killed midway leaves a lock that hangs every later start), but only ``inference_all_reduce`` uses
  it; training's collectives go through ``torch.distributed``.
- torch's deprecation notice for ``all_gather_into_tensor``, which DeepSpeed's ZeRO still calls, is not
  printed once per rank per run: it is DeepSpeed's to act on, not a user's.
- Nor is WarmupLR's "Attempting to get learning rate from scheduler before it has started": its own
  constructor asks before its first step, in every rank of every run.
"""

from __future__ import annotations

import logging
import os
import warnings
from types import ModuleType

import torch


def import_deepspeed() -> ModuleType:
    """The ``deepspeed`` module, configured as the module docstring says."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
    warnings.filterwarnings(
        "ignore", message=r".*all_gather_into_tensor` is deprecated", category=FutureWarning
    )
    ds_log = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _SchedulerNotStarted) for f in ds_log.filters):
        ds_log.addFilter(_SchedulerNotStarted())
    return deepspeed


class _SchedulerNotStarted(logging.Filter):
    """Drops WarmupLR's warning that its constructor read the learning rate before its first step."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "get learning rate from scheduler before it has started" not in record.getMessage()
