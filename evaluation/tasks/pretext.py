"""The pretext tasks themselves on held-out clips, with the trained heads and context transformers
and no probe: how often the model's own choice is right, against its chance level.

- ``avc_top1``: among a batch of clips from distinct scenes, does each clip's audio pick its own
  video (and its video its own audio), per viewpoint with ``train.avc_form`` trunks? Chance is
  1 / batch size.
- ``avsa_top1``: among a clip's K viewpoints, does the prediction for viewpoint k pick viewpoint k
  (both directions, audio→video and video→audio)? Chance is 1 / K.
- ``avsa_chosen_<lo>_<hi>``: the angle between the true and the chosen viewpoint, as the share of
  queries whose wrong choice lies that many degrees away (``avsa_top1`` is the share at 0°): a model
  that confuses a view with its antipode puts its mass in the last bin.

Random init is scored the same way (its heads untrained); the input oracle has no heads.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

from dataloading import seeds
from dataloading.viewpoints import angular_distance
from evaluation.encoders import Encoders
from evaluation.tasks import REFERENCE, Context, Scored, TaskResult, summarise
from evaluation.tasks.features import held_out
from trainer.config import AvcForm
from trainer.losses import avc_pairs, avsa_pairs
from trainer.models import AVSAOutput

NAME = "pretext"
ANGLE_BINS_DEG = (0.0, 60.0, 90.0, 135.0, 180.0)


def scene_batches(scenes: list[str], size: int, seed: int) -> list[np.ndarray]:
    """Clip indices in batches of about ``size`` that never hold two clips of one scene (as long as no
    scene has more clips than there are batches): scenes in a seeded order, their clips dealt round-robin."""
    count = max(1, -(-len(scenes) // size))
    unique = sorted(set(scenes))
    shuffled = np.random.default_rng([seed, seeds.PRETEXT_BATCHES]).permutation(len(unique))
    rank = {unique[u]: r for r, u in enumerate(shuffled)}
    order = sorted(range(len(scenes)), key=lambda i: (rank[scenes[i]], i))
    return [np.array(order[b::count]) for b in range(count)]


def _top1(query: Tensor, targets: Tensor) -> Tensor:
    """``[..., n]``: 1 where query i scores its own target i above every other (``[..., n, E]``), 1/m
    where it ties with m − 1 others at the top (a random tie-break's expectation, so a collapsed model
    scores chance), else 0."""
    scores = query @ targets.transpose(-1, -2)
    top = scores.amax(-1, keepdim=True)
    own_on_top = scores.diagonal(dim1=-2, dim2=-1) >= top.squeeze(-1)
    return own_on_top.float() / (scores >= top).sum(-1).float()


def _chosen_angle(query: Tensor, targets: Tensor, angles: Tensor) -> Tensor:
    """``[N, K]`` degrees between viewpoint k and the viewpoint its query scores highest; NaN where that
    is viewpoint k itself (a hit)."""
    chosen = (query @ targets.transpose(-1, -2)).argmax(-1)
    angle = angles.gather(-1, chosen[..., None]).squeeze(-1)
    return angle.masked_fill(chosen == torch.arange(chosen.shape[-1]), float("nan"))


def _pairwise_angles(directions: Tensor) -> Tensor:
    """``[N, K, K]`` degrees between the viewpoints of each clip (directions ``[N, K, 2]``, radians)."""
    az, el = directions[..., 0].numpy(), directions[..., 1].numpy()
    return torch.from_numpy(
        np.degrees(angular_distance(az[:, :, None], el[:, :, None], az[:, None], el[:, None]))
    )


def _scores(out: AVSAOutput, batches: list[Tensor], angles: Tensor, avc_form: AvcForm) -> dict[str, Tensor]:
    """Per item, averaged over both directions of the pairs each stage trains (:mod:`trainer.losses`):
    AVC top-1 per clip, AVSA top-1 and the chosen-angle bin indicators per (clip, viewpoint)."""
    avc = torch.zeros(len(angles))
    for rows in batches:  # each pair [N, V, E]: V problems over the batch's clips, top-1 averaged over V
        hits = [
            _top1(q[rows].transpose(0, 1), t[rows].transpose(0, 1)).mean(0)
            for q, t in avc_pairs(out, avc_form)
        ]
        avc[rows] = torch.stack(hits).mean(0)
    pairs = avsa_pairs(out.viewpoints)
    scores = {"avc_top1": avc, "avsa_top1": torch.stack([_top1(q, t) for q, t in pairs]).mean(0)}
    chosen = torch.stack([_chosen_angle(q, t, angles) for q, t in pairs])  # [2, N, K]
    for lo, hi in itertools.pairwise(ANGLE_BINS_DEG):  # NaN (a hit) falls in no bin
        inside = (chosen >= lo) & ((chosen < hi) | (hi == ANGLE_BINS_DEG[-1]))
        scores[f"avsa_chosen_{lo:.0f}_{hi:.0f}"] = inside.float().mean(0)
    return scores


def run(ctx: Context) -> TaskResult:
    clips, suite = held_out(ctx), ctx.suite
    n, k = clips.video.shape[:2]
    batches = [torch.from_numpy(b) for b in scene_batches(clips.scenes, suite.pretext_batch, suite.seed)]
    angles = _pairwise_angles(clips.directions)
    values: dict[str, dict[str, np.ndarray]] = {}
    methods: dict[str, Encoders] = {"model": ctx.model, REFERENCE: ctx.random_init}  # type: ignore[dict-item]
    for method, encoders in methods.items():
        scores = ctx.scored(
            NAME,
            method,
            lambda e=encoders: _scores(
                e.forward(clips.video, clips.audio, clips.directions), batches, angles, ctx.cfg.train.avc_form
            ),
        )
        for metric, value in scores.items():
            values.setdefault(metric, {})[method] = value.flatten().double().numpy()
    scenes = np.asarray(clips.scenes)
    metrics = {m: Scored(scenes if m == "avc_top1" else np.repeat(scenes, k), v) for m, v in values.items()}
    batch_of = torch.zeros(n)
    for rows in batches:
        batch_of[rows] = len(rows)
    chance = {"avc_top1": float((1 / batch_of).mean()), "avsa_top1": 1.0 / k}
    return summarise(NAME, "avsa_top1", metrics, suite, chance=chance)
