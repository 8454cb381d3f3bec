"""Resuming on another world size with real DeepSpeed ranks (gloo) and checkpoints on S3 (SeaweedFS).

2 ranks train and are preempted (a SIGTERM from inside the run, so the stop is deterministic); the
checkpoint is resumed on 1 and on 3 ranks. After loading, every rank's fp32 weights and Adam moments
equal the saving run's to 0 ulp; the loss goes on falling; and with the shard loader, the epoch in
which the world size changed reads every sample of the dataset exactly once. Each test starts three
DeepSpeed groups (2, 1 and 3 ranks): minutes on 2 shared cores.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from cluster.stack import Stack
from dataloading.batch import Batch, BatchSource
from dataloading.storage import filesystem
from dataloading.synth.samples import write_dataset
from tests.distributed import run_distributed
from tests.helpers import tiny_config
from trainer import safe_load
from trainer.config import Config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

State = dict[str, list[torch.Tensor]]

log = logging.getLogger(__name__)


def _full_state(model: torch.nn.Module) -> State:
    """Each parameter's fp32 weight and Adam moments, gathered whole from the ZeRO partitions (a
    collective: every rank calls it)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    return {
        name: [
            safe_get_full_fp32_param(p).clone(),
            *(safe_get_full_optimizer_state(p, key).clone() for key in ("exp_avg", "exp_avg_sq")),
        ]
        for name, p in model.named_parameters()
    }


def _whole_state(engine: Any) -> State:
    """Without ZeRO every rank holds the whole state: each parameter and its Adam moments."""
    state = engine.optimizer.state
    return {
        name: [p.detach().clone(), *(state[p][key].clone() for key in ("exp_avg", "exp_avg_sq"))]
        for name, p in engine.module.named_parameters()
    }


def _run(
    rank: int, world_size: int, cfg: Config, resume: str | None, stop_after: int, source: BatchSource | None
) -> dict[str, Any]:
    """One rank of a training run; a SIGTERM on the last rank after step ``stop_after`` - 2 stops every
    rank after step ``stop_after`` with a checkpoint (the ranks' vote is read one step late; 0: no
    stop)."""
    from trainer.train import train

    loaded: dict[str, Any] = {}

    def on_resume(engine: Any) -> None:
        loaded["state"] = _full_state(engine.module) if cfg.train.zero_stage else _whole_state(engine)
        adam = engine.optimizer.optimizer if cfg.train.zero_stage else engine.optimizer  # torch's Adam
        loaded["adam_steps"] = {float(s["step"]) for s in adam.state.values()}
        loaded["buffers"] = {k: v.clone() for k, v in engine.module.named_buffers()}

    def on_step(step: int) -> None:
        if step == stop_after - 2 and rank == world_size - 1:
            os.kill(os.getpid(), signal.SIGTERM)

    result = train(cfg, source, resume=resume, on_step=on_step, on_resume=on_resume)
    return {
        "loaded": loaded,
        "final": _full_state(result.model) if cfg.train.zero_stage else {},
        "buffers": {k: v.clone() for k, v in result.model.named_buffers()},
        "history": result.history,
        "preempted": result.preempted,
        "checkpoint": result.checkpoint,
        "step": result.step,
        "seconds": result.resume_seconds,
        "keys": getattr(source, "keys", {}),
    }


def _s3(stack: Stack, tmp: Path, name: str, **overrides: Any) -> Config:
    s = stack.storage()
    return tiny_config(
        tmp,
        **{"train.checkpoint_url": f"s3://{stack.cfg.bucket}/{name}/ckpt"},
        **{
            f"storage.{k}": getattr(s, k)
            for k in ("endpoint_url", "access_key_id", "secret_access_key", "region")
        },
        **overrides,
    )


def _relative_loss(rows: Sequence[dict[str, float]], world_size: int, batch: int) -> float:
    """Mean AVC loss over ``rows`` as a fraction of chance, ln(clips in the global batch)."""
    return sum(r["loss"] for r in rows) / len(rows) / math.log(world_size * batch)


def _same(a: State, b: State) -> bool:
    return a.keys() == b.keys() and all(torch.equal(x, y) for k in a for x, y in zip(a[k], b[k], strict=True))


def test_resume_on_one_and_three_ranks_restores_weights_and_adam_moments_exactly(
    stack: Stack, tmp_path: Path
) -> None:
    schedule = {
        "train.steps_per_epoch": 6,
        "train.avc_epochs": 3,
        "train.avsa_epochs": 0,
        "train.checkpoint_every": 100,
        "train.lr": 1e-3,
        "train.warmup_steps": 6,
    }
    run = f"elastic-{uuid.uuid4().hex[:8]}"
    two = run_distributed(
        _run, 2, _s3(stack, tmp_path, f"{run}/w2", **schedule), None, 4, None, timeout_s=600
    )
    assert all(r["preempted"] and r["step"] == 4 for r in two)
    saved = two[0]["checkpoint"]
    assert saved.endswith("/step_00000004") and _same(two[0]["final"], two[1]["final"])

    one = run_distributed(
        _run, 1, _s3(stack, tmp_path, f"{run}/w1", **schedule), saved, 7, None, timeout_s=600
    )
    three = run_distributed(
        _run, 3, _s3(stack, tmp_path, f"{run}/w3", **schedule), saved, 0, None, timeout_s=600
    )
    for rank in [*one, *three]:
        assert _same(rank["loaded"]["state"], two[0]["final"])  # 0 ulp, every tensor
        assert rank["loaded"]["adam_steps"] == {4.0}  # the bias correction goes on from step 4
    # BatchNorm statistics (each saving rank's its own): every new rank starts from their mean.
    saving = [r["buffers"] for r in two]
    assert any(not torch.equal(saving[0][k], saving[1][k]) for k in saving[0] if "running_mean" in k)
    for rank in [*one, *three]:
        for name, value in rank["loaded"]["buffers"].items():
            expected = (
                (saving[0][name] + saving[1][name]) / 2 if value.is_floating_point() else saving[0][name]
            )
            torch.testing.assert_close(value, expected, rtol=1e-6, atol=0)
    assert three[0]["step"] == 18 and one[0]["preempted"] and one[0]["step"] == 7
    fs, path = filesystem(saved, stack.storage())
    log.info(
        "resume of a %.1f MB checkpoint saved by 2 ranks: on 1 rank %.1f s, on 3 ranks %.1f s",
        fs.du(path) / 1e6,
        one[0]["seconds"],
        three[0]["seconds"],
    )

    # The schedule goes on: a linear warm-up to step 6, then constant.
    lrs = [r["lr"] for r in two[0]["history"] + one[0]["history"]]
    assert lrs[4] - lrs[3] == pytest.approx(lrs[3] - lrs[2]) and lrs[6:] == [1e-3] * len(lrs[6:])
    # The loss (as a fraction of chance, which depends on the global batch) keeps falling.
    start, history = _relative_loss(two[0]["history"][:3], 2, 4), three[0]["history"]
    assert _relative_loss(history[-3:], 3, 4) < min(start, _relative_loss(history[:3], 3, 4))


class Recording:
    """A batch source that notes the sample keys of every batch it hands out, by epoch."""

    def __init__(self, source: BatchSource) -> None:
        self.source, self.stats = source, source.stats
        self.keys: dict[int, list[str]] = {}

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.source:
            self.keys.setdefault(self.source.epoch, []).extend(batch.meta["key"])  # type: ignore[attr-defined]
            yield batch

    def batches_left(self) -> int:
        return self.source.batches_left()

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, states: Sequence[dict[str, Any]]) -> None:
        self.source.load_state_dict(states)


def _loader_run(
    rank: int, world_size: int, cfg: Config, resume: str | None, stop_after: int
) -> dict[str, Any]:
    from dataloading.loader import build_loader

    source = Recording(build_loader(cfg.data, rank, world_size, storage=cfg.storage, device="cpu"))
    return _run(rank, world_size, cfg, resume, stop_after, source)


def test_the_epoch_of_a_world_size_change_reads_every_sample_once(stack: Stack, tmp_path: Path) -> None:
    """20 clips on S3 in batches of 2: 2 ranks read epoch 0 and 2 steps of epoch 1 (8 clips) and are
    preempted; 1 rank (6 steps) or 3 ranks (2 steps) read the other 12."""
    url = f"s3://{stack.cfg.bucket}/elastic-data-{uuid.uuid4().hex[:8]}"
    keys = write_dataset(url, [3, 5, 4, 2, 6], seconds=1.5, storage=stack.storage())
    data = {
        "data.url": url,
        "data.batch_size": 2,
        "data.workers": 0,
        "train.avc_epochs": 2,
        "train.avsa_epochs": 0,
    }
    run = f"elastic-loader-{uuid.uuid4().hex[:8]}"
    two = run_distributed(_loader_run, 2, _s3(stack, tmp_path, f"{run}/w2", **data), None, 7, timeout_s=600)
    assert two[0]["preempted"] and two[0]["step"] == 7
    assert sorted(k for r in two for k in r["keys"][0]) == sorted(keys)
    first = [k for r in two for k in r["keys"][1]]
    assert len(first) == 8
    for world in (1, 3):
        cfg = _s3(stack, tmp_path, f"{run}/w{world}", **data)
        rest = run_distributed(_loader_run, world, cfg, two[0]["checkpoint"], 0, timeout_s=600)
        assert rest[0]["step"] == 7 + 12 // (2 * world)
        assert sorted(first + [k for r in rest for k in r["keys"][1]]) == sorted(keys)  # each once


def test_without_zero_the_whole_state_loads_on_another_world_size(tmp_path: Path) -> None:
    """ZeRO stage 0 keeps the optimizer whole in DeepSpeed's model states file: 3 ranks load what 2 saved."""
    schedule = {
        "train.zero_stage": 0,
        "train.steps_per_epoch": 2,
        "train.avc_epochs": 1,
        "train.avsa_epochs": 0,
    }
    saving = tiny_config(tmp_path / "w2", **schedule)
    run_distributed(_run, 2, saving, None, 0, None, timeout_s=600)
    tag = f"{saving.train.checkpoint_url}/step_00000002"
    three = run_distributed(_run, 3, tiny_config(tmp_path / "w3", **schedule), tag, 0, None, timeout_s=600)
    saved = safe_load.load(f"{tag}/mp_rank_00_model_states.pt")  # DeepSpeed's own file
    moments = saved["optimizer"]["state"]
    for rank in three:
        assert rank["step"] == 2 and rank["loaded"]["adam_steps"] == {2.0}
        for i, (name, (weight, exp_avg, exp_avg_sq)) in enumerate(rank["loaded"]["state"].items()):
            assert torch.equal(weight, saved["module"][name]), name
            assert torch.equal(exp_avg, moments[i]["exp_avg"]) and torch.equal(
                exp_avg_sq, moments[i]["exp_avg_sq"]
            )
