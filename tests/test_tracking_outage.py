"""Tracking never blocks or kills training: a real MLflow server killed by PID mid-run, restarted by
`avsa stack up`, or left down past the end of the run and replayed later."""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from cluster.stack import Stack, free_stack_config
from tests.distributed import run_distributed
from tests.helpers import Captured, tiny_config
from trainer.config import Config, StackConfig

pytestmark = pytest.mark.integration

OUTAGE_S = 60.0
MEASURED = 150  # steps timed before the kill and again during the outage


def _ride_through(
    rank: int, world_size: int, cfg: Config, stack_cfg: StackConfig, heal: bool
) -> dict[str, Any]:
    """Train; kill the server after MEASURED steps; with ``heal``, bring it back once OUTAGE_S have
    passed (the MEASURED steps after the kill run at full speed, then the loop waits out the rest)."""
    from trainer.train import train

    captured, stack = Captured("trainer.outbox", "trainer.tracking"), Stack(stack_cfg)
    times: list[float] = []
    killed: list[float] = []

    def on_step(step: int) -> None:
        times.append(time.perf_counter())
        if step == MEASURED:  # the server and its uvicorn workers, by PID
            stack.kill("mlflow")
            killed.append(time.monotonic())
        if heal and step == 2 * MEASURED:
            time.sleep(max(0.0, killed[0] + OUTAGE_S - time.monotonic()))
            stack.heal(["mlflow"])

    result = train(cfg, on_step=on_step)
    steps = [b - a for a, b in itertools.pairwise(times)]
    return {
        "run_id": result.run_id,
        "checkpoint": result.checkpoint,
        "step": result.step,
        "before": steps[MEASURED // 5 : MEASURED - 1],  # warm: past the first steps' allocations
        "during": steps[MEASURED : 2 * MEASURED - 1],
        "log": captured.lines,
    }


def _config(tmp: Path, uri: str, steps: int, **overrides: Any) -> Config:
    return tiny_config(
        tmp,
        **{
            "tracking.uri": uri,
            "train.avc_epochs": 1,
            "train.avsa_epochs": 0,
            "train.steps_per_epoch": steps,
            "train.checkpoint_every": 100,
            "tracking.samples_every": 0,
            "tracking.backlog_dir": str(tmp / "backlog"),
            **overrides,
        },
    )


def _history(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "loss"))


@pytest.fixture
def mlflow_stack(tmp_path: Path) -> Any:
    stack = Stack(free_stack_config(tmp_path / "stack"))
    stack.up(["mlflow"])
    try:
        yield stack
    finally:
        stack.down()


def test_a_60_s_outage_mid_run_loses_nothing_and_slows_no_step(mlflow_stack: Stack, tmp_path: Path) -> None:
    uri = mlflow_stack.client_env()["MLFLOW_TRACKING_URI"]
    steps = 3 * MEASURED
    # A small memory bound, so that the outage's records spill to the file and come back from it.
    cfg = _config(tmp_path, uri, steps, **{"tracking.backlog_memory": 50})
    (out,) = run_distributed(_ride_through, 1, cfg, mlflow_stack.cfg, True, timeout_s=600)
    assert out["step"] == steps
    client = MlflowClient(uri)
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert _history(client, out["run_id"]) == list(range(1, steps + 1))  # every step, exactly once
    assert run.data.tags["checkpoint.latest"] == out["checkpoint"]
    assert run.data.tags["checkpoint.step"] == str(steps)
    # Said once each: unreachable, back.
    assert sum("unreachable" in line for line in out["log"]) == 1, out["log"]
    assert sum("is back after" in line for line in out["log"]) == 1, out["log"]
    assert not list((tmp_path / "backlog").rglob("*.jsonl"))  # delivered: no spill or backlog left
    before, during = statistics.median(out["before"]), statistics.median(out["during"])
    print(f"median step {1000 * before:.1f} ms before the outage, {1000 * during:.1f} ms during it")
    assert during <= 1.05 * before, (before, during)


def test_a_server_down_at_the_end_leaves_a_backlog_that_replay_delivers(
    mlflow_stack: Stack, tmp_path: Path
) -> None:
    uri = mlflow_stack.client_env()["MLFLOW_TRACKING_URI"]
    steps = MEASURED + 60
    cfg = _config(tmp_path, uri, steps, **{"tracking.flush_timeout_s": 3})
    (out,) = run_distributed(_ride_through, 1, cfg, mlflow_stack.cfg, False, timeout_s=300)
    assert out["step"] == steps  # the run ended normally, with the server still down
    named = [line for line in out["log"] if "avsa tracking replay" in line]
    assert len(named) == 1, out["log"]
    backlog = Path(named[0].rsplit(" ", 1)[-1].rstrip("`"))
    assert backlog.is_file() and backlog.parent.name == out["run_id"]

    mlflow_stack.heal(["mlflow"])
    client = MlflowClient(uri)
    assert client.get_run(out["run_id"]).info.status == "RUNNING"  # its end is in the backlog
    replay = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "tracking", "replay", str(backlog)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert replay.returncode == 0, replay.stderr + replay.stdout
    assert not backlog.exists()
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert _history(client, out["run_id"]) == list(range(1, steps + 1))
    assert run.data.tags["checkpoint.latest"] == out["checkpoint"] and run.data.tags[
        "checkpoint.step"
    ] == str(steps)
