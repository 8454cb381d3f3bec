"""Reading checkpoint files without letting them run code.

A ``.pt`` file is a pickle, and unpickling an arbitrary pickle can call any function: a checkpoint
from shared storage (or named by an MLflow tag anyone can set) would then run code on whoever loads
it. :func:`load` uses torch's weights-only unpickler, which builds only tensors, plain Python values
and the globals explicitly allowed here.

DeepSpeed reads its own files with ``torch.load(..., weights_only=False)`` (its checkpoint engine,
``zero_to_fp32``), which no allow-list reaches. So before DeepSpeed or the export reads a checkpoint,
:func:`verify` loads every ``.pt`` file of the downloaded copy with the weights-only unpickler: a
pickle it accepts can only rebuild the allowed objects, whichever unpickler later reads the same bytes
(the same opcodes call the same few constructors), so a file that would run anything else is refused
before anything unpickles it in full. The copy is in a private temporary folder, so the bytes
checked are the bytes DeepSpeed then reads.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds a pickle that the weights-only unpickler refuses (it could run code)."""


def deepspeed_globals() -> list[Any]:
    """The globals beyond torch's own that DeepSpeed 0.19 pickles into its checkpoint files (found by
    listing the pickles' GLOBAL opcodes of ZeRO 0–3 checkpoints of this trainer), each safe to rebuild
    because rebuilding calls none of its code:

    - ``ZeroStageEnum`` (``zero_stage`` in ``*optim_states.pt``, ZeRO 1–3): an ``int`` Enum, rebuilt by
      looking its value up among the members.
    - ``LossScaler`` (``loss_scaler`` in ``*optim_states.pt``): a plain object rebuilt by
      ``object.__new__`` and an update of its ``__dict__`` (``cur_scale``, ``dynamic``); it has no
      ``__setstate__``. (fp16's ``DynamicLossScaler`` is not allowed: this trainer never uses fp16.)
    - ``fragment_address`` (``param_slice_mappings`` in ``*optim_states.pt``, ZeRO 1–2): a dataclass of
      two ints, rebuilt the same way.

    Everything else in them (tensors, storages, ``torch.Size``, ``OrderedDict``, numbers, strings,
    the ``ds_config`` dict) is on torch's own weights-only list.
    """
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address]


@contextmanager
def allowed_globals() -> Iterator[None]:
    """Within the block, the weights-only unpickler also accepts :func:`deepspeed_globals` (scoped,
    so nothing else in the process is loosened)."""
    with torch.serialization.safe_globals(deepspeed_globals()):
        yield


def load(path: str, mmap: bool = False) -> Any:
    """The object saved in ``path`` by ``torch.save``, on the CPU, read with the weights-only unpickler
    and :func:`deepspeed_globals`; :class:`UnsafeCheckpointError` naming the file and the refused
    global if it holds anything else."""
    try:
        with allowed_globals():
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        # torch's message opens with advice to retry with weights_only=False; keep only what it found.
        found = [line for line in str(exc).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        raise UnsafeCheckpointError(
            f"{path} was refused: it holds objects whose unpickling could run code, so nothing of it was "
            f"loaded (a tampered or foreign checkpoint; do not load it another way). "
            f"{' '.join(found) or str(exc).splitlines()[-1]}"
        ) from exc


def verify(folder: str) -> None:
    """Check every ``.pt`` file under ``folder`` (subfolders too) with :func:`load`, memory-mapped so
    tensors are not read; raises :class:`UnsafeCheckpointError` on the first that could run code."""
    for parent, _, names in sorted(os.walk(folder)):
        for name in sorted(names):
            if name.endswith(".pt"):
                load(os.path.join(parent, name), mmap=True)
