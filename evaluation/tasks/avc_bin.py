"""AVC-Bin: does this audio belong to this video? Mismatches are the same viewpoint of another clip."""

from __future__ import annotations

from torch import Tensor

from evaluation.tasks import Context, TaskResult
from evaluation.tasks.pairs import run_pair_task

NAME = "avc_bin"


def other_clip(audio: Tensor) -> Tensor:
    """Audio ``[N, K, D]`` of clip n+1 (cyclically) at the same viewpoint."""
    return audio.roll(1, dims=0)


def run(ctx: Context) -> TaskResult:
    return run_pair_task(ctx, NAME, other_clip)
