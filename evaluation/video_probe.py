"""A learnability check of the video trunk: can it, with labels, learn which objects a crop shows?

The tiny (or paper) video trunk plus a linear head is trained from scratch with multi-label binary
cross-entropy on the object classes in view of each viewpoint crop, from the training shards through
the training loader (its viewpoints, crops and augmentations), then scored on held-out shards read once
each without augmentation: the mean over classes of the ROC AUC, with a 95 % interval from a bootstrap
over held-out scenes (:mod:`evaluation.bootstrap`). Chance is 0.5.

Labels come from the synthetic scenes' ground truth (``video_NNNNN.json`` beside each input video that
`avsa synth` writes; the dataset's manifest names the inputs): a class is in a crop when an object of it
has at least a quarter of its width inside the crop's square field of view (:func:`in_view`) at the middle
of the crop's frame window. Angles are radians, times seconds.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from dataloading.config import StorageConfig
from dataloading.schema import source_id
from dataloading.shards import read_manifest
from dataloading.storage import filesystem
from dataloading.synth.scene import SOUNDING_CLASSES
from evaluation.bootstrap import Estimate, interval, resample_weights
from trainer.config import Config
from trainer.models import PRESETS, VideoEncoder

CLASSES = SOUNDING_CLASSES  # what a label says is in view: the object classes of the synthetic scenes
VISIBLE_SHARE = 0.25  # of an object's width that must be inside a crop for its class to be in view
_CHUNK = 64  # held-out crops per forward pass


@dataclass(frozen=True)
class SceneObject:
    """A visible object of a scene: its class, angular width (radians) and trajectory: ``times``
    (seconds into the scene) with the azimuth and elevation there (radians, azimuth unwrapped)."""

    object_class: str
    width: float
    times: np.ndarray
    azimuth: np.ndarray
    elevation: np.ndarray

    def direction(self, t: float) -> tuple[float, float]:
        """(azimuth, elevation) in radians at ``t`` seconds (linear between trajectory samples)."""
        az = float(np.interp(t, self.times, self.azimuth))
        return (az + math.pi) % (2 * math.pi) - math.pi, float(np.interp(t, self.times, self.elevation))

    @classmethod
    def from_truth(cls, source: dict) -> SceneObject:
        """One source of a ground-truth JSON (degrees there)."""
        t, az, el = np.asarray(source["trajectory"], dtype=np.float64).reshape(-1, 3).T
        return cls(
            source["object_class"],
            math.radians(source["angular_width_deg"]),
            t,
            np.unwrap(np.radians(az)),
            np.radians(el),
        )


def scene_objects(truth: dict) -> list[SceneObject]:
    """The objects of a ground-truth JSON that a label can name: visible ones of :data:`CLASSES`
    (silent look-alikes included: they look the same; pillars are no class)."""
    return [
        SceneObject.from_truth(s) for s in truth["sources"] if s["visible"] and s["object_class"] in CLASSES
    ]


def in_view(
    azimuth: float, elevation: float, width: float, view_azimuth: float, view_elevation: float, fov: float
) -> bool:
    """Whether an object at (``azimuth``, ``elevation``), ``width`` wide, shows in the square gnomonic
    crop looking at (``view_azimuth``, ``view_elevation``) with field of view ``fov`` (all radians): it is
    in front of the camera and its centre lies within the crop widened on every side by
    :data:`VISIBLE_SHARE` of its width, so at least that share of it is inside."""
    # The object's direction in the camera's frame (x forward, y left, z up): the steering rotation
    # R_y(ν)·R_z(−φ) of dataloading.foa, which brings the view's direction to the front.
    ce = math.cos(elevation)
    x, y, z = ce * math.cos(azimuth), ce * math.sin(azimuth), math.sin(elevation)
    ca, sa = math.cos(view_azimuth), math.sin(view_azimuth)
    x, y = ca * x + sa * y, -sa * x + ca * y
    cv, sv = math.cos(view_elevation), math.sin(view_elevation)
    x, z = cv * x + sv * z, -sv * x + cv * z
    if x <= 0:
        return False
    reach = fov / 2 + VISIBLE_SHARE * width
    return abs(math.atan2(y, x)) <= reach and abs(math.atan2(z, x)) <= reach


class SceneLabels:
    """Per-viewpoint labels of the clips of one shard dataset, from its manifest and the ground truth
    beside each input video. A clip's key is ``<source id>_c<index>``; clip ``index`` starts at
    ``index`` × the manifest's ``clip_seconds`` into its scene."""

    def __init__(self, url: str, storage: StorageConfig | None = None) -> None:
        manifest = read_manifest(url, storage)
        if manifest is None:
            raise ValueError(
                f"{url}: no manifest.json; the video probe needs a preprocessed synthetic dataset"
            )
        self.clip_seconds = manifest.settings.clip_seconds
        self.scenes: dict[str, list[SceneObject]] = {}
        for input_url, entry in manifest.inputs.items():
            if entry.status != "accepted":
                continue
            truth_url = input_url.rsplit(".", 1)[0] + ".json"
            fs, path = filesystem(truth_url, storage)
            if not fs.exists(path):
                raise ValueError(
                    f"{truth_url}: no ground truth beside input {input_url}; the video probe needs scenes "
                    "written by `avsa synth` (layout files)"
                )
            self.scenes[source_id(input_url)] = scene_objects(json.loads(fs.cat_file(path)))

    def scene_of(self, key: str) -> tuple[str, float]:
        """(source id, start of the clip in its scene in seconds) of sample ``key``."""
        source, index = key.rsplit("_c", 1)
        if source not in self.scenes:
            raise KeyError(f"sample {key}: its input is not in the dataset's manifest")
        return source, int(index) * self.clip_seconds

    def labels(
        self,
        key: str,
        start_s: float,
        directions: Tensor,
        fov: Tensor,
        flipped: bool = False,
        window_s: float = 0.0,
    ) -> Tensor:
        """Labels ``[K, len(CLASSES)]`` (1.0: in view) of the K viewpoints of clip ``key`` whose frame
        window starts ``start_s`` seconds into the clip and lasts ``window_s``; ``directions`` ``[K, 2]``
        (azimuth, elevation) and ``fov`` ``[K]`` in radians, as the loader gives them. A ``flipped`` clip
        was mirrored: its objects' azimuths are negated, as its viewpoints' were."""
        source, clip_start = self.scene_of(key)
        t = clip_start + start_s + window_s / 2
        out = torch.zeros(len(directions), len(CLASSES))
        for obj in self.scenes[source]:
            az, el = obj.direction(t)
            az = -az if flipped else az
            for k, ((view_az, view_el), view_fov) in enumerate(
                zip(directions.tolist(), fov.tolist(), strict=True)
            ):
                if in_view(az, el, obj.width, view_az, view_el, view_fov):
                    out[k, CLASSES.index(obj.object_class)] = 1.0
        return out


def weighted_aucs(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC of ``scores`` ``[N]`` for binary ``labels`` ``[N]`` under each row of item ``weights``
    ``[R, N]`` (ties count a half): ``[R]``, NaN where a row weighs no positive or no negative."""
    pos, neg = labels > 0, labels <= 0
    s_pos, s_neg = scores[pos], scores[neg]
    wins = (s_pos[:, None] > s_neg[None]).astype(np.float64) + 0.5 * (s_pos[:, None] == s_neg[None])
    w_pos, w_neg = weights[:, pos], weights[:, neg]
    pairs = w_pos.sum(1) * w_neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("rp,pn,rn->r", w_pos, wins, w_neg) / pairs


def mean_auc(
    scores: np.ndarray, labels: np.ndarray, groups: Sequence[str], resamples: int, seed: int = 0
) -> tuple[Estimate, dict[str, float]]:
    """Mean over classes of the ROC AUC of ``scores`` ``[N, C]`` for ``labels`` ``[N, C]`` (items: one
    viewpoint each), with a 95 % interval from resampling whole scenes (``groups[i]``: item i's scene;
    each replicate weighs each item by how often its scene was drawn). A class without positives or
    without negatives is left out, of the point estimate and of any replicate where that happens.
    Returns the estimate and the AUC of each class scored."""
    _, codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    scenes = int(codes.max()) + 1
    replicate_weights = resample_weights(scenes, resamples, seed)[:, codes].astype(np.float64)  # [R, N]
    per_class: dict[str, float] = {}
    replicates = []
    for c, name in enumerate(CLASSES[: labels.shape[1]]):
        point = weighted_aucs(scores[:, c], labels[:, c], np.ones((1, len(codes))))[0]
        if np.isnan(point):
            continue
        per_class[name] = float(point)
        replicates.append(weighted_aucs(scores[:, c], labels[:, c], replicate_weights))
    if not per_class:
        raise ValueError("no class has both positive and negative held-out viewpoints: nothing to score")
    stacked = np.stack(replicates)  # [classes, R]
    scored = ~np.isnan(stacked)
    means = np.where(scored, stacked, 0.0).sum(0) / np.maximum(scored.sum(0), 1)
    means = means[scored.any(0)]  # the mean over the classes each replicate could score
    return interval(float(np.mean(list(per_class.values()))), means, scenes), per_class


@dataclass
class ProbeResult:
    """The held-out mean per-class AUC with its interval (``auc.groups``: held-out scenes), each class's
    AUC and held-out positives (viewpoints with it in view), the held-out viewpoints scored, and the
    mean training loss of the last logging window."""

    auc: Estimate
    per_class: dict[str, float]
    positives: dict[str, int]
    views: int
    train_loss: float


def _video_model(cfg: Config) -> nn.Module:
    preset = PRESETS[cfg.model.preset]
    trunk = VideoEncoder(preset.widths, preset.video_depths)
    return nn.Sequential(trunk, nn.Linear(trunk.out_dim, len(CLASSES)))


def train(
    cfg: Config, steps: int, device: torch.device, say: Callable[[str], None] = print, every: int = 50
) -> tuple[nn.Module, float]:
    """The video trunk and linear head trained for ``steps`` Adam steps (lr ``train.lr``, seed
    ``train.seed``) on the batches of ``data.url`` (augmented, as the pretext sees them); returns the
    model in eval mode and the mean loss of the last ``every`` steps."""
    from dataloading.loader import build_loader  # imports DALI: only when shards are read

    torch.manual_seed(cfg.train.seed)
    model = _video_model(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    labeller = SceneLabels(cfg.data.url, cfg.storage)
    loader = build_loader(cfg.data, storage=cfg.storage, device=device)
    window_s = cfg.data.frames / cfg.data.fps
    step, epoch, losses, positives, started = 0, 0, [], [], time.monotonic()
    model.train()
    while step < steps:
        loader.set_epoch(epoch)
        for batch in loader:
            labels = torch.stack(
                [
                    labeller.labels(key, start, directions, fov, bool(flipped), window_s)
                    for key, start, directions, fov, flipped in zip(
                        batch.meta["key"],
                        batch.meta["start_s"],
                        batch.directions.cpu(),
                        batch.meta["fov"].cpu(),
                        batch.meta["flipped"].tolist(),
                        strict=True,
                    )
                ]
            ).flatten(0, 1)  # [B·K, C]
            logits = model(batch.video.flatten(0, 1).to(device))
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            losses, positives = (
                [*losses[-every + 1 :], loss.item()],
                [*positives[-every + 1 :], labels.mean().item()],
            )
            if step % every == 0 or step == steps:
                rate = step * cfg.data.batch_size / (time.monotonic() - started)
                say(
                    f"step {step}/{steps}: loss {np.mean(losses):.4f}, "
                    f"labels in view {np.mean(positives):.3f}, {rate:.1f} clips/s"
                )
            if step == steps:
                break
        epoch += 1
    return model.eval(), float(np.mean(losses)) if losses else math.nan


@torch.inference_mode()
def held_out_scores(
    cfg: Config, model: nn.Module, device: torch.device
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(scores ``[N, C]``, labels ``[N, C]``, scene per item) of every viewpoint of the held-out clips at
    ``eval.clips_url`` (``eval.clips`` of them when > 0), read once each without augmentation."""
    from dataloading.loader import complete_pass  # imports DALI: only when shards are read
    from dataloading.shards import CompletePlan, list_shards

    url = cfg.eval.clips_url
    labeller = SceneLabels(url, cfg.storage)
    plan = CompletePlan(list_shards(url, cfg.storage), cfg.data.seed, cfg.eval.clips)
    clips = list(complete_pass(cfg.data, plan, cfg.storage, crops=True, what="held-out clips"))
    if not clips:
        raise ValueError(f"{url}: no readable held-out clips")
    window_s = cfg.data.frames / cfg.data.fps
    labels = torch.cat(
        [
            labeller.labels(
                c.key, c.start_s, torch.stack((c.azimuth, c.elevation), -1), c.fov, False, window_s
            )
            for c in clips
        ]
    )
    crops = torch.cat([c.crops for c in clips])  # uint8 [N·K, 3, T, h, w]
    scores = torch.cat(
        [model(chunk.to(device).float().div_(255.0)).float().cpu() for chunk in crops.split(_CHUNK)]
    )
    scenes = [labeller.scene_of(c.key)[0] for c in clips for _ in range(len(c.azimuth))]
    return scores.numpy(), labels.numpy(), scenes


def run(cfg: Config, steps: int, device: torch.device, say: Callable[[str], None] = print) -> ProbeResult:
    """Train on ``data.url`` for ``steps`` steps and score on ``eval.clips_url`` (see the module doc)."""
    if not cfg.eval.clips_url:
        raise ValueError("set eval.clips_url to shards of held-out scenes")
    say(f"video probe: {cfg.model.preset} video trunk + linear head, {steps} steps on {cfg.data.url}")
    model, loss = train(cfg, steps, device, say)
    scores, labels, scenes = held_out_scores(cfg, model, device)
    auc, per_class = mean_auc(scores, labels, scenes, cfg.eval.resamples, cfg.eval.seed)
    positives = {name: int(labels[:, c].sum()) for c, name in enumerate(CLASSES)}
    return ProbeResult(auc, per_class, positives, len(scenes), loss)
