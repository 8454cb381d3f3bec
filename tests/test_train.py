"""The DeepSpeed training loop on 2 CPU ranks (gloo) and the pieces it is generated from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dataloading.batch import BatchSource
from dataloading.features import FeatureSettings
from dataloading.synth.batches import SyntheticSource
from tests.distributed import run_distributed
from tests.helpers import tiny_config
from trainer.config import Config
from trainer.deepspeed_config import deepspeed_config, resolve_precision


def test_deepspeed_config_follows_the_typed_config(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, **{"train.zero_stage": 2, "train.warmup_steps": 5, "train.grad_clip": 0.5})
    ds = deepspeed_config(cfg, "cpu")
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["zero_optimization"] == {"stage": 2, "contiguous_gradients": False}
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": False}  # auto on CPU
    adam = ds["optimizer"]["params"]
    assert ds["optimizer"]["type"] == "Adam" and adam["lr"] == 1e-4 and adam["weight_decay"] == 1e-5
    assert adam["adam_w_mode"] is False  # the paper's Adam: L2 decay, not AdamW
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 5
    assert deepspeed_config(cfg, "cuda")["bf16"] == {"enabled": True}
    assert "scheduler" not in deepspeed_config(tiny_config(tmp_path), "cpu")  # constant lr
    assert resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ValueError, match="zero_stage"):
        deepspeed_config(tiny_config(tmp_path, **{"train.zero_stage": 4}), "cpu")


def test_synthetic_source_is_deterministic_resumable_and_rank_specific(tmp_path: Path) -> None:
    data = tiny_config(tmp_path).data
    source = SyntheticSource(data, batches_per_epoch=3, rank=1, world_size=2)
    assert isinstance(source, BatchSource)
    source.set_epoch(1)
    batches = list(source)
    assert len(batches) == 3
    b = batches[0]
    assert b.video.shape == (4, 2, 3, 4, 32, 32)
    assert b.audio.shape == (4, 2, FeatureSettings.of(data).channels, 32, 33)
    assert b.directions.shape == (4, 2, 2)
    assert b.directions[..., 0].abs().max() <= torch.pi

    again = SyntheticSource(data, batches_per_epoch=3, rank=1, world_size=2)
    again.load_state_dict([{"epoch": 1, "index": 1}] * 2)
    again.set_epoch(1)  # positioned inside epoch 1 already: continues there
    assert again.batches_left() == 2
    rest = list(again)
    assert len(rest) == 2 and torch.equal(rest[0].video, batches[1].video)
    with pytest.raises(ValueError, match="disagree"):
        again.load_state_dict([{"epoch": 1, "index": 1}, {"epoch": 1, "index": 2}])
    other_rank = SyntheticSource(data, batches_per_epoch=3, rank=0, world_size=2)
    other_rank.set_epoch(1)
    assert not torch.equal(next(iter(other_rank)).audio, b.audio)


def _train_rank(rank: int, world_size: int, cfg: Config) -> list[dict[str, float]]:
    from trainer.train import train

    return train(cfg).history


@pytest.mark.integration
def test_loss_falls_and_accuracies_rise_above_chance_on_two_ranks(tmp_path: Path) -> None:
    steps = 40
    cfg = tiny_config(
        tmp_path,
        **{"train.lr": 1e-3, "train.steps_per_epoch": steps, "train.avc_epochs": 1, "train.avsa_epochs": 1},
    )
    history = run_distributed(_train_rank, 2, cfg, timeout_s=400)
    keys = ("loss", "avc_acc", "avsa_acc")
    assert [[r[k] for k in keys] for r in history[0]] == [[r[k] for k in keys] for r in history[1]]
    avc, avsa = history[0][:steps], history[0][steps:]

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    assert mean(avc[-10:], "loss") < mean(avc[:5], "loss") - 0.3
    # Chance: AVC picks 1 of the global batch (2 ranks × 4 clips), AVSA 1 of K=2 viewpoints.
    assert mean(avc[-10:], "avc_acc") > 1 / 8 + 0.15
    assert mean(avsa[-10:], "avsa_acc") > 1 / 2 + 0.15
    assert [r["stage_avsa"] for r in (avc[-1], avsa[0])] == [0.0, 1.0]
    # The learning-health telemetry rides along, and the run records when each stage left chance.
    assert {"cos_clip_video", "cos_video_pred", "margin", "grad_total", "grad_video_encoder"} <= set(avc[0])
    assert [r["left_plateau_avc"] for r in avc if "left_plateau_avc" in r] == [
        next(i + 1 for i, r in enumerate(avc) if r["loss"] < r["chance"] - 0.05)
    ]
    last = history[0][-1]
    assert last["lr"] == pytest.approx(1e-3) and last["clips_per_s"] > 0
    assert 0 <= last["data_wait_fraction"] < 1 and last["memory_gib"] > 0


def _window_rows(rank: int, world_size: int, cfg: Config) -> list[dict[str, float]]:
    from trainer.train import train

    return train(cfg).history


@pytest.mark.integration
def test_metrics_are_the_mean_over_each_logging_window_and_both_ranks(tmp_path: Path) -> None:
    """With tracking.log_every 4 the rows are steps 1-4, 5-6 (the AVC stage ends), 7-8 and 9-12 (logged
    at multiples of 4), each the mean of the per-step rows over its steps and both ranks."""
    schedule = {"train.steps_per_epoch": 6, "train.avc_epochs": 1, "train.avsa_epochs": 1, "train.lr": 1e-3}
    every = run_distributed(_window_rows, 2, tiny_config(tmp_path / "a", **schedule), timeout_s=400)[0]
    windowed = tiny_config(tmp_path / "b", **schedule, **{"tracking.log_every": 4})
    rows = run_distributed(_window_rows, 2, windowed, timeout_s=400)[0]
    assert len(every) == 12 and len(rows) == 4
    for row, (first, last) in zip(rows, ((0, 4), (4, 6), (6, 8), (8, 12)), strict=True):
        for key in ("loss", "avc_acc", "avsa_acc"):
            mean = sum(r[key] for r in every[first:last]) / (last - first)
            assert row[key] == pytest.approx(mean, rel=1e-5)
        assert row["stage_avsa"] == every[last - 1]["stage_avsa"] and row["clips_per_s"] > 0
        assert 0 <= row["data_wait_fraction"] <= 1


@pytest.mark.integration
def test_each_stage_warms_up_again(tmp_path: Path) -> None:
    """The AVSA stage restarts the linear warm-up: its context transformers start with no Adam moments.
    Each row logs the rate of the next step; DeepSpeed's WarmupLR begins one iteration before 0, so the
    first stage's ramp starts a step later."""
    schedule = {"train.steps_per_epoch": 6, "train.avc_epochs": 1, "train.avsa_epochs": 1, "train.lr": 1e-3}
    cfg = tiny_config(tmp_path, **schedule, **{"train.warmup_steps": 4, "tracking.log_every": 1})
    rows = run_distributed(_window_rows, 1, cfg, timeout_s=400)[0]
    ramp = [0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 1e-3]
    assert [r["lr"] for r in rows] == pytest.approx([0.0, *ramp[:-1], *ramp])


def _votes(rank: int, world_size: int, wants: list[bool]) -> list[bool]:
    from trainer.preemption import StopVote

    vote = StopVote(world_size)
    seen = [vote.cast(rank == 1 and want) for want in wants]
    return [*seen, vote.close()]


def test_a_stop_vote_is_seen_by_every_rank_one_step_later() -> None:
    wants = [False, False, True, False]
    seen = run_distributed(_votes, 2, wants, timeout_s=120)
    assert seen[0] == seen[1] == [False, False, False, True, False]
