"""AVC-Bin: does this audio belong to this video? Mismatches are the same viewpoint of a clip from
another scene."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from evaluation.tasks import Context, TaskResult
from evaluation.tasks.pairs import run_pair_task

NAME = "avc_bin"


def other_scene(audio: Tensor, scenes: np.ndarray) -> Tensor:
    """Audio ``[n, K, D]`` of another clip, at the same viewpoint, from another scene: clips ordered by
    scene, each takes the one half the list away. Raises if one scene holds more than half the clips."""
    order = np.argsort(scenes, kind="stable")
    partner = np.empty_like(order)
    partner[order] = np.roll(order, -(len(order) // 2))
    if (scenes[partner] == scenes).any():
        raise ValueError("AVC-Bin: one scene holds more than half of a fold's clips; add held-out scenes")
    return audio[partner]


def run(ctx: Context) -> TaskResult:
    return run_pair_task(ctx, NAME, other_scene)
