"""A tracked 2-rank training run against the stack's MLflow server, then `avsa export --run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from cluster.launch import train_and_export
from cluster.stack import Stack
from tests.helpers import tiny_config
from trainer.export import submodule_state
from trainer.models import PRESETS, AudioEncoder

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
STEPS = 4  # 2 AVC + 2 AVSA


@pytest.fixture(scope="module")
def tracked_run(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("tracked")
    env = {**os.environ, **stack.client_env()}
    s = stack.storage()
    cfg = tiny_config(
        tmp,
        **{
            "train.processes": 2,
            "train.steps_per_epoch": 2,
            "train.avc_epochs": 1,
            "train.avsa_epochs": 1,
            "train.checkpoint_every": 2,
            "tracking.uri": env["MLFLOW_TRACKING_URI"],
            "tracking.experiment": f"test-train-{uuid.uuid4().hex[:8]}",
            # Credentials in the config must not reach MLflow's params.
            "storage.access_key_id": s.access_key_id,
            "storage.secret_access_key": s.secret_access_key,
        },
    )
    trained = train_and_export(cfg)  # the `avsa train` path: 2 local rank processes
    assert trained.checkpoint == f"{cfg.train.checkpoint_url}/step_{STEPS:08d}" and trained.run_id
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    return {
        "cfg": cfg,
        "tmp": tmp,
        "env": env,
        "client": client,
        "runs": client.search_runs([experiment.experiment_id]),
    }


def test_one_mlflow_run_per_job_with_params_metrics_images_and_checkpoint(
    tracked_run: dict[str, Any],
) -> None:
    runs, client, cfg = tracked_run["runs"], tracked_run["client"], tracked_run["cfg"]
    assert len(runs) == 1  # two ranks, one run
    run = runs[0]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (
        params["train.lr"] == "0.0001"
        and params["model.preset"] == "tiny"
        and params["data.viewpoints"] == "2"
    )
    assert "storage.access_key_id" not in params and "storage.secret_access_key" not in params
    assert cfg.storage.secret_access_key not in json.dumps(params)
    for key in ("loss", "avc_acc", "avsa_acc", "lr", "clips_per_s", "data_wait_fraction", "memory_gib"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(
            range(1, STEPS + 1)
        ), key
    images = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert images and all(p.endswith(".png") for p in images)
    assert run.data.tags["checkpoint.latest"] == f"{cfg.train.checkpoint_url}/step_{STEPS:08d}"
    assert run.data.tags["world_size"] == "2"


LOAD_AND_EMBED = """
import sys, torch
from trainer.embedder import load_audio_encoder
encoder = load_audio_encoder(sys.argv[1])
assert "deepspeed" not in sys.modules, "loading an export imported deepspeed"
with torch.no_grad():
    torch.save(encoder(torch.load(sys.argv[2])), sys.argv[3])
"""


def test_export_by_run_id_gives_the_training_models_embeddings_without_deepspeed(
    tracked_run: dict[str, Any],
) -> None:
    tmp, env, cfg = tracked_run["tmp"], tracked_run["env"], tracked_run["cfg"]
    run_id = tracked_run["runs"][0].info.run_id
    out = tmp / "export"
    done = subprocess.run(
        [BIN / "avsa", "export", "--run", run_id, "--out", out, "--tracking.uri", env["MLFLOW_TRACKING_URI"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["step"] == STEPS and report["run_id"] == run_id and report["model_version"] == "1"
    assert sorted(os.listdir(out)) == [
        "audio_encoder.safetensors",
        "config.json",
        "video_encoder.safetensors",
    ]

    # The training model as DeepSpeed saved it (rank 0's module), read without the export code.
    saved = torch.load(
        Path(cfg.train.checkpoint_url, f"step_{STEPS:08d}", "mp_rank_00_model_states.pt"), weights_only=False
    )
    trained = AudioEncoder(7, PRESETS["tiny"].widths)  # logmel_iv
    trained.load_state_dict(submodule_state(saved["module"], "audio_encoder"))
    features = torch.randn(6, 7, 32, 33, generator=torch.Generator().manual_seed(0))
    torch.save(features, tmp / "features.pt")
    subprocess.run(
        [sys.executable, "-c", LOAD_AND_EMBED, out, tmp / "features.pt", tmp / "embeddings.pt"],
        check=True,
        timeout=120,
    )
    with torch.no_grad():
        expected = trained.eval()(features)
    torch.testing.assert_close(torch.load(tmp / "embeddings.pt"), expected, rtol=0, atol=0)

    version = tracked_run["client"].get_model_version(f"{cfg.tracking.experiment}-encoders", "1")
    assert version.run_id == run_id and version.source.endswith("/encoders")
