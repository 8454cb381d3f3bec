"""AVSA-Bin: is this audio steered toward the direction this video shows?

The mismatch for viewpoint k is the same clip's audio steered toward its viewpoint k+1 (cyclically):
the same sound field, rotated so that another direction faces front. The loader samples viewpoints
at least ``data.min_separation_deg`` apart, so this is a rotation of at least that angle — the
paper's rotated negative, drawn from the directions the clip was already steered to.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from evaluation.tasks import Context, TaskResult
from evaluation.tasks.pairs import run_pair_task

NAME = "avsa_bin"


def other_viewpoint(audio: Tensor, scenes: np.ndarray) -> Tensor:
    """Audio ``[n, K, D]`` of the same clip at viewpoint k+1 (cyclically); needs K ≥ 2."""
    if audio.shape[1] < 2:
        raise ValueError("AVSA-Bin needs at least 2 viewpoints per clip (data.viewpoints)")
    return audio.roll(1, dims=1)


def run(ctx: Context) -> TaskResult:
    return run_pair_task(ctx, NAME, other_viewpoint)
