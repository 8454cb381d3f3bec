"""The supervised video probe (`avsa probe`): its labels on constructed cases, its AUC and interval, and
a few steps end to end on tiny shards with a manifest and ground truth like `avsa synth` writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.cli import main as avsa
from dataloading.schema import (
    INPUT_ACCEPTED,
    InputEntry,
    Manifest,
    Settings,
    sample_key,
    shard_name,
    source_id,
)
from dataloading.shardwriter import ShardWriter
from dataloading.synth.samples import PATCH_RADIUS, synthetic_sample
from evaluation.video_probe import CLASSES, SceneLabels, in_view, mean_auc, run
from trainer.config import load_config
from trainer.data import TINY

SECONDS = 1.0
SIZE = (128, 64)
FOV = math.radians(60)
WIDTH = math.radians(10)


@pytest.mark.parametrize(
    ("obj", "view", "seen"),
    [
        ((0, 0), (0, 0), True),  # straight ahead
        ((180, 0), (0, 0), False),  # behind
        ((-178, 3), (179, 0), True),  # ahead across the seam
        ((90, 0), (0, 0), False),  # to the left, far outside 60°
        ((31, 0), (0, 0), True),  # centre 1° outside, a quarter of its 10° width inside
        ((34, 0), (0, 0), False),  # only 1° of its 10° inside
        ((0, 32), (0, 0), True),  # the crop is square: the same reach up as sideways
        ((0, 36), (0, 0), False),
        ((0, 45), (0, 20), True),  # a view looking up
        ((0, -10), (0, 45), False),
    ],
)
def test_a_class_is_in_view_when_a_quarter_of_its_object_is_inside_the_crop(
    obj: tuple[float, float], view: tuple[float, float], seen: bool
) -> None:
    az, el = map(math.radians, obj)
    view_az, view_el = map(math.radians, view)
    assert in_view(az, el, WIDTH, view_az, view_el, FOV) is seen


def _truth(object_class: str, azimuth: float, width: float = 2 * PATCH_RADIUS) -> dict:
    """A ground-truth JSON as `avsa synth` writes it (the fields the probe reads): one still object."""
    az = round(math.degrees(azimuth), 3)
    return {
        "sources": [
            {
                "visible": True,
                "object_class": object_class,
                "angular_width_deg": math.degrees(width),
                "trajectory": [[0.0, az, 0.0], [SECONDS, az, 0.0]],
            },
            {  # a pillar is no class
                "visible": True,
                "object_class": "pillar",
                "angular_width_deg": 5.0,
                "trajectory": [[0.0, az, 0.0], [SECONDS, az, 0.0]],
            },
        ]
    }


def write_scenes(root: Path, scenes: list[tuple[str, float]], seed: int = 0) -> str:
    """Shards of one 1-s clip per scene (a red patch at the scene's azimuth on the horizon, its sound
    from there), a manifest naming an input video per scene, and each input's ground truth beside it
    (the video itself is not needed). Returns the dataset URL."""
    raw, url = root / "raw", str(root / "shards")
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    inputs = {}
    with ShardWriter() as writer:
        for i, (object_class, azimuth) in enumerate(scenes):
            video = str(raw / f"video_{i:05d}.mp4")
            key = sample_key(source_id(video), 0)
            sample = synthetic_sample(key, rng, SECONDS, SIZE, object_direction=(azimuth, 0.0))
            writer.add(key, sample)
            (raw / f"video_{i:05d}.json").write_text(json.dumps(_truth(object_class, azimuth)))
            inputs[video] = InputEntry(INPUT_ACCEPTED, duration_s=SECONDS, clips=1, shards=[shard_name(0)])
        entry = writer.publish(f"{url}/{shard_name(0)}")
    settings = Settings(str(raw), SECONDS, len(scenes), 16, "vp9", 8, 24000, "ambix", "synthetic", SIZE)
    manifest = Manifest(settings, shards={shard_name(0): entry}, inputs=inputs)
    (root / "shards" / "manifest.json").write_bytes(manifest.to_json())
    return url


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(1)
    train = [(CLASSES[i % 2], float(rng.uniform(-3, 3))) for i in range(8)]
    held_out = [(CLASSES[i % 2], float(rng.uniform(-3, 3))) for i in range(6)]
    return write_scenes(root / "train", train), write_scenes(root / "held-out", held_out, seed=1)


def test_labels_follow_the_ground_truth_of_each_clips_scene(datasets: tuple[str, str]) -> None:
    url, _ = datasets
    labels = SceneLabels(url)
    manifest_inputs = sorted(labels.scenes)
    assert len(manifest_inputs) == 8
    source = manifest_inputs[0]
    (obj,) = labels.scenes[source]  # the pillar is left out
    az, _ = obj.direction(0.5)
    directions = torch.tensor([[az, 0.0], [az + math.pi, 0.0], [az + 0.3, 0.3]])
    fov = torch.full((3,), FOV)
    got = labels.labels(sample_key(source, 0), 0.25, directions, fov, window_s=0.25)
    expected = torch.zeros(3, len(CLASSES))
    expected[[0, 2], CLASSES.index(obj.object_class)] = 1.0  # ahead or near: in view; behind: not
    torch.testing.assert_close(got, expected)
    # A flipped clip's objects are mirrored along with its viewpoints.
    flipped = labels.labels(sample_key(source, 0), 0.25, -directions, fov, flipped=True, window_s=0.25)
    torch.testing.assert_close(flipped, expected)
    with pytest.raises(KeyError, match="not in the dataset's manifest"):
        labels.labels("elsewhere-0123abcd_c00000", 0.0, directions, fov)


def test_the_auc_is_one_for_perfect_scores_and_a_half_for_constant_ones() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((200, len(CLASSES))) < 0.3).astype(float)
    scenes = [f"s{i // 4}" for i in range(200)]
    perfect, per_class = mean_auc(labels + 0.1 * rng.random(labels.shape), labels, scenes, 200)
    assert perfect.mean == perfect.low == perfect.high == 1.0 and set(per_class) == set(CLASSES)
    constant, _ = mean_auc(np.zeros_like(labels), labels, scenes, 200)
    assert constant.mean == constant.low == constant.high == 0.5
    noise, _ = mean_auc(rng.random(labels.shape), labels, scenes, 200)
    assert noise.low < 0.5 < noise.high and noise.groups == 50
    only_some = labels.copy()
    only_some[:, 1:] = 0  # classes without positives are left out
    _, scored = mean_auc(rng.random(labels.shape), only_some, scenes, 200)
    assert set(scored) == {CLASSES[0]}


def test_a_few_steps_end_to_end_give_an_auc_inside_its_interval(datasets: tuple[str, str]) -> None:
    train, held_out = datasets
    overrides = {
        **TINY,
        "data.url": train,
        "data.viewpoint_sampler": "objects",
        "data.workers": 0,
        "eval.clips_url": held_out,
        "eval.resamples": 200,
        "train.lr": 1e-3,
    }
    lines: list[str] = []
    result = run(load_config(None, overrides), 3, torch.device("cpu"), say=lines.append)
    assert any("step 3/3" in line for line in lines)
    a = result.auc
    assert 0.0 <= a.low <= a.mean <= a.high <= 1.0 and a.groups == 6
    assert result.views == 6 * TINY["data.viewpoints"]
    assert sum(result.positives.values()) >= 6  # each clip's first view looks at its object
    assert set(result.per_class) == set(CLASSES[:2])


def test_the_cli_prints_the_held_out_auc(datasets: tuple[str, str], capsys: pytest.CaptureFixture) -> None:
    train, held_out = datasets
    flags = [f"--{k}={v}" for k, v in TINY.items() if k != "data.url"]
    flags += ["--data.workers=0", "--data.viewpoint_sampler=objects", "--eval.resamples=100"]
    code = avsa(
        ["probe", "--steps", "2", "--clips", held_out, "--device", "cpu", f"--data.url={train}", *flags]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "video probe: held-out AUC 0." in out or "video probe: held-out AUC 1." in out
