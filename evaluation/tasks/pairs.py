"""What AVC-Bin and AVSA-Bin share: frozen viewpoint embeddings of held-out clips and an MLP that
tells matching (video, audio) pairs from mismatched ones.

Each task only decides which audio is the mismatch for every (clip, viewpoint); every video then
appears once with its own audio and once with that mismatch, so the classes are balanced and chance
is 0.5. Training and test pairs come from disjoint clips (first and second half of the batches).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from evaluation.datasets import held_out_batches
from evaluation.encoders import Encoders
from evaluation.metrics import accuracy
from evaluation.probe import classify
from evaluation.tasks import Context, TaskResult
from trainer.data import SYNTHETIC_SCHEME

log = logging.getLogger(__name__)

# (video [N, K, D], audio [N, K, D]) -> audio [N, K, D] where entry (n, k) must not match video (n, k)
Mismatch = Callable[[Tensor], Tensor]


def embeddings(encoders: Encoders, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
    """Trunk embeddings ``[N, K, D]`` of crops ``[N, K, 3, T, H, W]`` and features ``[N, K, C, F, T]``."""
    n, k = video.shape[:2]
    v = encoders.embed_video(video.flatten(0, 1)).unflatten(0, (n, k))
    a = encoders.embed_audio(audio.flatten(0, 1)).unflatten(0, (n, k))
    return v, a


def pair_dataset(video: Tensor, audio: Tensor, mismatch: Mismatch) -> tuple[Tensor, Tensor]:
    """Inputs ``[2·N·K, 2D]`` = [video, audio] and labels (1 = matching) for every viewpoint."""
    wrong = mismatch(audio)
    x = torch.cat([torch.cat([video, audio], -1), torch.cat([video, wrong], -1)]).flatten(0, 1)
    y = torch.cat([torch.ones(video.shape[:2]), torch.zeros(video.shape[:2])]).flatten()
    return x, y


def run_pair_task(ctx: Context, task: str, mismatch: Mismatch) -> TaskResult:
    """Accuracy of the matching-pair MLP for the trained and the random-init encoders."""
    cfg = ctx.model.cfg
    url = ctx.suite.clips_url or cfg.data.url
    if not (ctx.suite.clips_url or url.startswith(SYNTHETIC_SCHEME)):
        log.warning(
            "%s on the run's training shards %s: pass held-out shards as the suite's clips_url", task, url
        )
    batches = held_out_batches(cfg, url, ctx.suite.clip_batches, ctx.model.device, ctx.storage)
    video = torch.cat([b.video for b in batches])
    audio = torch.cat([b.audio for b in batches])
    half = len(batches) // 2 * batches[0].video.shape[0]
    scores = {}
    for method, encoders in (("model", ctx.model), ("random_init", ctx.random_init)):
        v, a = embeddings(encoders, video, audio)
        train_x, train_y = pair_dataset(v[:half], a[:half], mismatch)
        test_x, test_y = pair_dataset(v[half:], a[half:], mismatch)
        predicted = classify(
            train_x, train_y, test_x, 2, ctx.suite.probe_epochs, ctx.suite.hidden, ctx.suite.seed
        )
        scores[method] = {"acc": accuracy(predicted, test_y.long())}
    return TaskResult(task, "acc", scores)
