"""FLOPs of a training step and model FLOPs utilisation (MFU): the arithmetic behind the GPU
benchmark's ``ratio:`` line, kept here so that it is tested anywhere, without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

# Dense bf16 tensor-core peak in FLOP/s (vendor data sheets) by a part of the device name, the denominator
# of MFU. Checked in order, so that the PCIe H100 is matched before the SXM one.
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
)


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU from its name (``torch.cuda.get_device_name``), None if unknown."""
    return next((peak for part, peak in PEAK_BF16_FLOPS if part in device_name), None)


def mfu(flops_per_step: float, step_seconds: float, peak: float) -> float:
    """Model FLOPs utilisation: the FLOPs a step needs, per second it took, over the peak FLOP/s."""
    return flops_per_step / step_seconds / peak


def training_flops(
    build: Callable[[], nn.Module], shapes: Sequence[tuple[int, ...]], reduce: Callable[[Any], torch.Tensor]
) -> int:
    """FLOPs of one forward and backward pass of ``build()`` on float inputs of ``shapes`` (convolutions,
    matmuls and attention, as :class:`torch.utils.flop_counter.FlopCounterMode` counts them; ``reduce``
    turns the output into the scalar to differentiate). Traced on the meta device: the paper model is
    counted without memory or compute. Inputs need no gradient, so the first layer computes none for them."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build()
        inputs = [torch.empty(shape) for shape in shapes]
    with FlopCounterMode(display=False) as counter:
        reduce(model(*inputs)).backward()
    return counter.get_total_flops()


def embedding_sum(out: Any) -> torch.Tensor:
    """A scalar depending on every embedding of an :class:`trainer.models.AVSAOutput` (its loss's FLOPs,
    a few MFLOPs of similarities, are negligible next to the encoders')."""
    return sum(t.float().sum() for part in (out.viewpoints, out.clips) for t in vars(part).values())
