"""The FLOPs and MFU arithmetic (:mod:`trainer.flops`), and `python -m bench gpu` without a GPU:
it says so and exits 0."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from trainer.config import load_config
from trainer.flops import embedding_sum, mfu, peak_flops, training_flops
from trainer.models import AVSAModel

REPO = Path(__file__).resolve().parents[1]


def test_without_a_gpu_it_says_it_needs_one_and_exits_0() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "gpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "needs a CUDA GPU" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "ratio: nan"


def test_flops_of_a_two_layer_mlp_count_forward_and_both_backward_products() -> None:
    n, a, b, c = 3, 10, 20, 5
    flops = training_flops(
        lambda: nn.Sequential(nn.Linear(a, b), nn.Linear(b, c)), [(n, a)], lambda y: y.sum()
    )
    # forward 2nab + 2nbc; backward: weight gradients 2nab + 2nbc, the input gradient of the second layer
    # 2nbc (the data needs none)
    assert flops == 4 * n * a * b + 6 * n * b * c


def test_flops_of_the_model_scale_with_the_batch() -> None:
    cfg = load_config(None, {"model.preset": "tiny"})

    def count(clips: int) -> int:
        shapes = [(clips, 2, 3, 4, 32, 32), (clips, 2, 4, 32, 33), (clips, 2, 2)]
        return training_flops(lambda: AVSAModel(cfg.model, 4), shapes, embedding_sum)

    assert count(4) == 2 * count(2) > 0


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("Quadro", None),
    ],
)
def test_peak_flops_by_device_name(name: str, peak: float | None) -> None:
    assert peak_flops(name) == peak


def test_mfu_is_achieved_over_peak_flops() -> None:
    assert math.isclose(mfu(1e12, 0.5, 4e12), 0.5)  # 1 TFLOP in 0.5 s on a 4 TFLOP/s part
