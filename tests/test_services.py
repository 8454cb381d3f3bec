"""The MLflow server and the Ray head of the local stack, used the way users use them."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from cluster.stack import Stack
from tests.helpers import RAY_CLI, run_job

pytestmark = pytest.mark.integration


def test_mlflow_run_logged_over_http_reads_back(stack: Stack, tmp_path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = stack.client_env()["MLFLOW_TRACKING_URI"]
    assert uri.startswith("http://127.0.0.1:")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("services-test")
    with mlflow.start_run(run_name="roundtrip") as run:
        mlflow.log_params({"train.lr": 1e-4, "data.viewpoints": 4})
        for step in range(3):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        (tmp_path / "note.txt").write_text("artifact through the proxy")
        mlflow.log_artifact(str(tmp_path / "note.txt"))
    client = MlflowClient(uri)
    got = client.get_run(run.info.run_id)
    assert got.data.params == {"train.lr": "0.0001", "data.viewpoints": "4"}
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0, 0.5, 1.0 / 3]
    local = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "dl"))
    assert Path(local).read_text() == "artifact through the proxy"
    # proxied artifacts: the run stores an mlflow-artifacts URI, the server holds the bytes
    assert got.info.artifact_uri.startswith("mlflow-artifacts:")


def test_ray_job_submit_runs_and_its_logs_are_read(stack: Stack) -> None:
    env = {**os.environ, **stack.client_env()}
    code = (
        "import ray; ray.init(); "
        "print('squares', sum(ray.get([ray.remote(lambda x: x * x).remote(i) for i in range(8)])))"
    )
    followed = run_job(env, "python", "-c", code, timeout_s=180)
    assert "squares 140" in followed
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", followed).group(0)
    logs = subprocess.run(
        [RAY_CLI, "job", "logs", job_id], env=env, capture_output=True, text=True, timeout=60
    ).stdout
    assert "squares 140" in logs  # kept by the head after the job ended
