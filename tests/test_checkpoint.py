"""Checkpoints: the latest pointer, atomic commits, RNG state and exact resume after a SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cluster.stack import Stack
from dataloading.synth.batches import SyntheticSource
from tests.distributed import DistributedError, run_distributed
from tests.helpers import FakeEngine, tiny_config
from trainer import checkpoint
from trainer.checkpoint import Checkpointer, read_text, resolve, rng_state, set_rng_state


def test_latest_moves_only_after_a_complete_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(tmp_path)
    root = cfg.train.checkpoint_url
    source = SyntheticSource(cfg.data, 2)
    saver = Checkpointer(cfg, rank=0, world_size=1)
    first = saver.write(FakeEngine(), step=2, epoch=1, source=source, run_id="r1")
    assert first == f"{root}/step_00000002"
    assert resolve("latest", root) == resolve("auto", root) == resolve(root, "unused") == first
    assert resolve(first, "unused") == first
    assert checkpoint.read_meta(first)["run_id"] == "r1"

    uploads = []

    def dying_upload(local: str, url: str, storage: Any = None) -> None:
        uploads.append(url)
        if len(uploads) == 2:
            raise OSError("killed mid-upload")
        checkpoint.upload_atomic.__wrapped__(local, url, storage)  # type: ignore[attr-defined]

    dying_upload.__wrapped__ = checkpoint.upload_atomic  # type: ignore[attr-defined]
    monkeypatch.setattr(checkpoint, "upload_atomic", dying_upload)
    with pytest.raises(OSError, match="mid-upload"):
        saver.write(FakeEngine(), step=4, epoch=2, source=source, run_id="r1")
    assert read_text(f"{root}/latest") == "step_00000002"  # the half-written step 4 is never named


def test_resolve_without_checkpoints(tmp_path: Path) -> None:
    assert resolve("auto", str(tmp_path)) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve("latest", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="neither"):
        resolve(str(tmp_path / "nothing"), str(tmp_path))


def test_rng_states_round_trip() -> None:
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def _train(rank: int, world_size: int, cfg: Any, resume: str | None, kill_after: int) -> dict[str, Any]:
    from trainer.train import train

    def on_step(step: int) -> None:
        if rank == 1 and step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no goodbye: like a lost node

    result = train(cfg, resume=resume, on_step=on_step)
    state = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    return {"losses": [h["loss"] for h in result.history], "state": state, "step": result.step}


@pytest.mark.integration
def test_run_killed_by_sigkill_resumes_from_s3_exactly(tmp_path: Path, stack: Stack) -> None:
    """2n steps straight == n steps, SIGKILL of one rank, resume from s3:// for the remaining steps;
    the resumed attempt continues the interrupted one's MLflow run."""
    schedule = {"train.steps_per_epoch": 3, "train.avc_epochs": 1, "train.avsa_epochs": 1, "train.lr": 1e-3}
    straight = run_distributed(_train, 2, tiny_config(tmp_path, **schedule), None, -1, timeout_s=300)

    s = stack.storage()
    url = f"s3://{stack.cfg.bucket}/test-resume-{uuid.uuid4().hex[:8]}"
    on_s3 = tiny_config(
        tmp_path,
        **schedule,
        **{"train.checkpoint_url": url, "train.checkpoint_every": 2},
        **{
            "tracking.uri": stack.client_env()["MLFLOW_TRACKING_URI"],
            "tracking.experiment": url.rsplit("/")[-1],
        },
        **{
            f"storage.{k}": getattr(s, k)
            for k in ("endpoint_url", "access_key_id", "secret_access_key", "region")
        },
    )
    # Checkpoints at steps 2, 3 (the AVC stage's end) and 4, which is mid-epoch (3 steps per epoch): the
    # loader position matters. Rank 1 dies after step 5, before any checkpoint has it.
    with pytest.raises(DistributedError):
        run_distributed(_train, 2, on_s3, None, 5, timeout_s=300)
    assert read_text(f"{url}/latest", s) == "step_00000004"

    resumed = run_distributed(_train, 2, on_s3, "latest", -1, timeout_s=300)
    assert resumed[0]["step"] == straight[0]["step"] == 6
    for rank in range(2):
        assert resumed[rank]["losses"] == straight[rank]["losses"][4:]  # steps 5 and 6 (AVSA): bit-equal
        for name, tensor in straight[rank]["state"].items():
            assert torch.equal(resumed[rank]["state"][name], tensor), name

    from mlflow.tracking import MlflowClient

    client = MlflowClient(on_s3.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name(on_s3.tracking.experiment).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # both attempts, one run
    steps = {m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")}
    assert steps == set(range(1, 7))
