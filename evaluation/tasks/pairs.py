"""What AVC-Bin and AVSA-Bin share: frozen viewpoint embeddings of held-out clips and an MLP that
tells matching (video, audio) pairs from mismatched ones.

Each task only decides which audio is the mismatch for every (clip, viewpoint); every video then
appears once with its own audio and once with that mismatch, so the classes are balanced and chance
is 0.5. The held-out scenes are split in two folds; the MLP trained on one fold's pairs is tested on the
other's and vice versa (two-fold cross-fitting), so every clip is tested exactly once and never by a
head that saw its scene. Mismatches are drawn within a fold, so no test pair holds a training clip.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from dataloading import seeds
from evaluation.probe import classify
from evaluation.tasks import Context, Scored, TaskResult, summarise
from evaluation.tasks.features import held_out

# (audio [n, K, D], scenes [n]) -> audio [n, K, D] where entry (i, k) must not match video (i, k)
Mismatch = Callable[[Tensor, np.ndarray], Tensor]


def embeddings(embedder: object, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
    """Embeddings ``[N, K, D]`` of crops ``[N, K, 3, T, H, W]`` and features ``[N, K, C, F, T]``."""
    n, k = video.shape[:2]
    v = embedder.embed_video(video.flatten(0, 1)).unflatten(0, (n, k))  # type: ignore[attr-defined]
    a = embedder.embed_audio(audio.flatten(0, 1)).unflatten(0, (n, k))  # type: ignore[attr-defined]
    return v, a


def scene_folds(scenes: list[str], seed: int) -> np.ndarray:
    """Fold 0 or 1 of every clip: the distinct scenes shuffled by ``seed`` and halved, so the clips of
    one scene always share a fold."""
    unique = sorted(set(scenes))
    if len(unique) < 2:
        raise ValueError(f"held-out clips come from {len(unique)} scene(s); two folds need at least 2")
    order = np.random.default_rng([seed, seeds.PAIR_FOLDS]).permutation(len(unique))
    fold_of = {unique[i]: int(rank >= len(unique) // 2) for rank, i in enumerate(order)}
    return np.array([fold_of[s] for s in scenes])


def pair_dataset(video: Tensor, audio: Tensor, wrong: Tensor) -> tuple[Tensor, Tensor]:
    """Inputs ``[2·N·K, 2D]`` = [video, audio] (matching, label 1) then [video, wrong] (label 0)."""
    x = torch.cat([torch.cat([video, audio], -1), torch.cat([video, wrong], -1)]).flatten(0, 1)
    y = torch.cat([torch.ones(video.shape[:2]), torch.zeros(video.shape[:2])]).flatten()
    return x, y


def run_pair_task(ctx: Context, task: str, mismatch: Mismatch) -> TaskResult:
    """Accuracy of the matching-pair MLP for every method, cross-fitted over two folds of scenes."""
    clips, suite = held_out(ctx), ctx.suite
    scenes = np.asarray(clips.scenes)
    folds = scene_folds(clips.scenes, suite.seed)
    k = clips.video.shape[1]
    # Item order (the same for every method): per test fold, its clips' matching pairs, then mismatches.
    groups = np.concatenate([np.tile(np.repeat(scenes[folds == f], k), 2) for f in (0, 1)])

    def correct(embedder: object) -> np.ndarray:
        v, a = embeddings(embedder, clips.video, clips.audio)
        hits = []
        for test in (0, 1):
            train_idx, test_idx = np.flatnonzero(folds != test), np.flatnonzero(folds == test)
            train_x, train_y = pair_dataset(
                v[train_idx], a[train_idx], mismatch(a[train_idx], scenes[train_idx])
            )
            test_x, test_y = pair_dataset(v[test_idx], a[test_idx], mismatch(a[test_idx], scenes[test_idx]))
            predicted = classify(train_x, train_y, test_x, 2, suite.probe_epochs, suite.hidden, suite.seed)
            hits.append((predicted == test_y.long()).numpy())
        return np.concatenate(hits).astype(np.float64)

    values = {m: ctx.scored(task, m, lambda e=e: correct(e)) for m, e in ctx.embedders().items()}
    return summarise(task, "acc", {"acc": Scored(groups, values)}, suite, chance={"acc": 0.5})
