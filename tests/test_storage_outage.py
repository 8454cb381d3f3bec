"""An object store that goes away for a while does not end a run: the real SeaweedFS server is killed by
PID mid-training (during shard reads and a checkpoint write) and restarted 30 s later by `avsa stack up`'s
healing; a permanent error still fails at once, naming the object."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from cluster.stack import Stack
from dataloading.storage import filesystem, write_bytes_atomic
from dataloading.synth.samples import write_dataset
from tests.distributed import run_distributed
from tests.helpers import Captured, tiny_config
from trainer.config import Config, StackConfig

pytestmark = pytest.mark.integration

OUTAGE_S = 30.0
KILL_AFTER = 3  # steps; checkpoints every 4: the step-4 checkpoint is written into the outage


def _train(rank: int, world_size: int, cfg: Config, stack_cfg: StackConfig | None) -> dict[str, Any]:
    """Train ``cfg``; with ``stack_cfg``, kill its S3 server after KILL_AFTER steps and bring it back
    OUTAGE_S later from another thread while the run goes on (and waits in its retries)."""
    from trainer.train import train

    outage: dict[str, float] = {}

    def on_step(step: int) -> None:
        if stack_cfg is None or step != KILL_AFTER:
            return
        stack = Stack(stack_cfg)
        stack.kill("s3")
        outage["start"] = time.monotonic()

        def heal() -> None:
            time.sleep(OUTAGE_S)
            stack.heal(["s3"])
            outage["end"] = time.monotonic()

        threading.Thread(target=heal, daemon=True).start()

    notices = Captured("dataloading.storage")  # what the rank said about the store while it retried
    started = time.monotonic()
    result = train(cfg, on_step=on_step)
    return {
        "notices": notices.lines,
        "started": started,
        "step": result.step,
        "state": {k: v.detach().clone() for k, v in result.model.state_dict().items()},
        "outage": outage,
        "finished": time.monotonic(),
    }


def _config(tmp: Path, stack: Stack, data: str, checkpoints: str) -> Config:
    s = stack.storage()
    return tiny_config(
        tmp,
        **{
            "data.url": data,
            "data.batch_size": 2,
            "data.workers": 0,  # shard reads in the rank itself, so they meet the outage
            "data.n_mels": 16,
            "train.avc_epochs": 1,
            "train.avsa_epochs": 1,
            "train.checkpoint_url": checkpoints,
            "train.checkpoint_every": 4,
            **{
                f"storage.{k}": getattr(s, k)
                for k in ("endpoint_url", "access_key_id", "secret_access_key", "region")
            },
        },
    )


def test_a_30_s_outage_mid_training_changes_no_weight(tmp_path: Path, stack: Stack) -> None:
    from trainer.checkpoint import read_meta
    from trainer.export import consolidated_state_dict

    root = f"s3://{stack.cfg.bucket}/outage-{uuid.uuid4().hex[:8]}"
    write_dataset(f"{root}/shards", [4, 4, 4, 4], seconds=1.5, size=(128, 64), storage=stack.storage())
    straight_cfg = _config(tmp_path / "a", stack, f"{root}/shards", f"{root}/ckpt-straight")
    (straight,) = run_distributed(_train, 1, straight_cfg, None, timeout_s=300)
    cfg = _config(tmp_path / "b", stack, f"{root}/shards", f"{root}/ckpt-outage")
    (out,) = run_distributed(_train, 1, cfg, stack.cfg, timeout_s=600)

    assert out["step"] == straight["step"] == 16  # 8 batches of 2 per stage
    assert out["outage"]["end"] - out["outage"]["start"] >= OUTAGE_S
    assert out["finished"] > out["outage"]["end"]  # the run waited the outage out instead of ending
    assert sum("retrying with backoff" in n for n in out["notices"]) == 1  # said once, not per retry
    took = [r["finished"] - r["started"] for r in (straight, out)]
    print(f"straight run {took[0]:.1f} s, with the {OUTAGE_S:.0f}-s outage {took[1]:.1f} s")
    assert not straight["notices"]
    for name, tensor in straight["state"].items():
        assert torch.equal(out["state"][name], tensor), name  # nothing read twice or skipped
    across = f"{root}/ckpt-outage/step_00000004"  # written while the store was down
    assert read_meta(across, stack.storage())["step"] == 4
    state, _, _ = consolidated_state_dict(across, stack.storage())
    assert state.keys() == straight["state"].keys()


def test_a_permanent_error_fails_at_once_and_names_the_object(stack: Stack) -> None:
    s = stack.storage()
    url = f"s3://{stack.cfg.bucket}/permanent-{uuid.uuid4().hex[:8]}/x.bin"
    write_bytes_atomic(url, b"x", s)
    for storage, target, error in (
        (s, url + ".missing", FileNotFoundError),  # NoSuchKey: the message names the object
        (replace(s, secret_access_key="not-the-secret"), url, PermissionError),  # 403
    ):
        fs, path = filesystem(target, storage)
        started = time.monotonic()
        with pytest.raises(error) as raised:
            fs.cat_file(path)
        assert time.monotonic() - started < 5, "a permanent error was retried"
        if error is FileNotFoundError:
            assert "x.bin.missing" in str(raised.value)
