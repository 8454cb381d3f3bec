"""Checkpoint retention (``train.keep_checkpoints``): what is kept, a deletion killed midway, and the
protocol with the real evaluation service on a real MLflow server while training deletes checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from cluster.stack import Stack
from dataloading.synth.batches import SyntheticSource
from evaluation.discovery import checkpoints_of
from evaluation.markers import Marker
from tests.distributed import run_distributed
from tests.helpers import (
    SERVICE_ARGS,
    FakeEngine,
    Trained,
    start_service,
    tiny_config,
    write_classification_set,
    write_doa_set,
)
from trainer import retention
from trainer.checkpoint import Checkpointer, read_text, resolve, tag_for_step
from trainer.config import Config, EvalConfig
from trainer.retention import DELETING, Saved, marker_key, prune, saved_checkpoints, to_delete


@given(
    steps=st.lists(st.integers(1, 60), min_size=1, max_size=12, unique=True),
    keep=st.integers(1, 4),
    data=st.data(),
)
def test_kept_are_the_newest_the_stage_ends_and_the_unevaluated(
    steps: list[int], keep: int, data: st.DataObject
) -> None:
    steps = sorted(steps)
    ends = set(data.draw(st.lists(st.sampled_from(steps), max_size=3)))
    done = set(data.draw(st.lists(st.sampled_from(steps), max_size=len(steps))))
    saved = [Saved(s, f"root/{tag_for_step(s)}", "avc" if s in ends else None) for s in steps]
    deleted = {s.step for s in to_delete(saved, keep, lambda step: step in done)}
    kept = set(steps) - deleted
    assert kept == set(steps[-keep:]) | ends | (set(steps) - done)
    untracked = {s.step for s in to_delete(saved, keep, None)}  # no service can know the run
    assert set(steps) - untracked == set(steps[-keep:]) | ends


def _saves(cfg: Config, steps: list[int], run_id: str, stage_ends: dict[int, str]) -> None:
    saver = Checkpointer(cfg, rank=0, world_size=1)
    for step in steps:
        saver.write(FakeEngine(), step, 0, SyntheticSource(cfg.data, 2), run_id, stage_ends.get(step))


def test_a_killed_deletion_leaves_latest_complete_and_the_next_pass_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(tmp_path)
    root = cfg.train.checkpoint_url
    _saves(cfg, [1, 2, 3, 4, 5], "run-a", {3: "avc"})
    _saves(tiny_config(tmp_path), [6], "run-b", {})  # another run in the same root: never touched
    tags = {marker_key(s): json.dumps({"state": "done", "attempt": 1}) for s in (1, 2, 3)}

    real_rm = retention.filesystem(root)[0].__class__.rm
    calls: list[str] = []

    def dying_rm(self: Any, path: str, *args: Any, **kwargs: Any) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError("killed mid-deletion")
        real_rm(self, path, *args, **kwargs)

    monkeypatch.setattr(retention.filesystem(root)[0].__class__, "rm", dying_rm)
    with pytest.raises(OSError, match="mid-deletion"):
        prune(root, "run-a", 1, None, tags)
    monkeypatch.undo()

    half = f"{root}/{tag_for_step(1)}"
    assert read_text(f"{half}/{DELETING}") == "run-a" and not os.path.exists(f"{half}/meta.json")
    latest = resolve("latest", root)
    assert latest == f"{root}/{tag_for_step(6)}" and os.path.exists(f"{latest}/meta.json")
    saved, leftovers = saved_checkpoints(root, "run-a")
    assert [s.step for s in saved] == [2, 3, 4, 5] and leftovers == [half]

    deleted = prune(root, "run-a", 1, None, tags)
    assert deleted == [half, f"{root}/{tag_for_step(2)}"]  # the leftover, then 2 (done, not kept)
    assert sorted(os.listdir(root)) == ["latest", *(tag_for_step(s) for s in (3, 4, 5, 6))]
    assert prune(root, "run-a", 1, None, tags) == []  # 3 is a stage end, 4 not evaluated, 5 the newest


def _train(rank: int, world_size: int, cfg: Config, hold: tuple[str, int]) -> list[str]:
    """Train; after step ``hold[1]`` wait until the evaluation service (on ``hold[0]``) has finished the
    step-1 checkpoint and is reading the step-2 one, so the next saves' retention runs during that read."""
    from trainer.train import train

    def on_step(step: int) -> None:
        if step != hold[1]:
            return
        client, deadline = MlflowClient(hold[0]), time.monotonic() + 400
        experiment = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
        states: dict[int, str] = {}
        while time.monotonic() < deadline:
            # The training run (the evaluation runs of the service live in the same experiment).
            (run,) = client.search_runs([experiment], filter_string="tags.`checkpoint.latest` LIKE '%'")
            tags = run.data.tags
            states = {s: Marker.from_tag(tags[marker_key(s)]).state for s in (1, 2) if marker_key(s) in tags}
            if states == {1: "done", 2: "running"}:
                return
            time.sleep(0.5)
        raise TimeoutError(f"the service did not get to step 2 in time: {states}")

    result = train(cfg, on_step=on_step)
    return [result.run_id or ""]


@pytest.mark.integration
def test_retention_never_deletes_what_the_running_service_has_not_evaluated(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = stack.client_env()["MLFLOW_TRACKING_URI"]
    experiment = f"retention-{uuid.uuid4().hex[:8]}"
    write_classification_set(str(tmp_path / "cls"), per_class=6)
    write_doa_set(str(tmp_path / "doa"), clips=20)
    data = [
        "--classification",
        str(tmp_path / "cls"),
        "--doa",
        str(tmp_path / "doa"),
        "--experiment",
        experiment,
        "--eval.trusted_roots",
        f"[{tmp_path}]",
    ]
    suite = EvalConfig(
        clips=16, classification_url=str(tmp_path / "cls"), doa_url=str(tmp_path / "doa"), probe_epochs=10
    )
    env = {**os.environ, **stack.client_env()}
    service_log = tmp_path / "service.log"
    service: subprocess.Popen | None = None
    cfg = tiny_config(
        tmp_path,
        **{
            "train.steps_per_epoch": 3,
            "train.avc_epochs": 1,
            "train.avsa_epochs": 1,
            "train.checkpoint_every": 1,
            "train.keep_checkpoints": 1,
            "tracking.uri": uri,
            "tracking.experiment": experiment,
        },
    )
    root = cfg.train.checkpoint_url
    # The ranks run here, without MLFLOW_TRACKING_URI: the old fluent flush would have made ./mlflow.db.
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        # The service needs the run to exist: it is started once training logged its first checkpoint.
        trained = Trained(uri, "", env, experiment, [*SERVICE_ARGS, *data], suite, str(tmp_path))
        service = start_service(trained, service_log)
        (run_id,) = run_distributed(_train, 1, cfg, (uri, 2), timeout_s=900)[0]
        client = MlflowClient(uri)

        def markers() -> dict[int, str]:
            tags = client.get_run(run_id).data.tags
            return {
                s: Marker.from_tag(tags[marker_key(s)]).state for s in range(1, 7) if marker_key(s) in tags
            }

        # Saves 3-6 ran retention while step 2 was being read: it was kept, and its evaluation succeeded.
        deadline = time.monotonic() + 400
        while markers().get(2) != "done":
            assert time.monotonic() < deadline and service.poll() is None, service_log.read_text()[-3000:]
            time.sleep(1)
        present = {int(n.removeprefix("step_")) for n in os.listdir(root) if n.startswith("step_")}
        states = markers()
        assert 1 not in present and states[1] == "done"  # deleted once final
        assert "failed" not in states.values(), service_log.read_text()[-3000:]
        for step in range(1, 7):  # nothing deleted unless its evaluation was final
            assert step in present or states.get(step) in ("done", "failed"), (step, states)
    finally:
        if service is not None and service.poll() is None:
            service.terminate()
            service.wait(60)
    # With the service stopped, one more pass keeps exactly N = 1 plus the protected ones.
    tags = client.get_run(run_id).data.tags
    prune(root, run_id, 1, None, tags)
    kept = {s.step for s in saved_checkpoints(root, run_id)[0]}
    protected = {3, 6} | {
        s for s in range(1, 7) if not retention.evaluated(tags, s)
    }  # stage ends, unevaluated
    assert kept == {6} | protected and len(kept) == 1 + len(protected - {6})
    assert {c.step for c in checkpoints_of(client.get_run(run_id))} == kept  # what the service still sees
    assert not list(tmp_path.rglob("mlflow.db"))  # tracking touched only the configured server
