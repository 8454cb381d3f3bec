"""The launch paths other than local processes: `ray job submit -- avsa train --ray` on the stack's
Ray head, and the DeepSpeed launcher with a hostfile."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.launch import config_overrides
from cluster.stack import Stack
from tests.helpers import run_job, tiny_config
from trainer.checkpoint import read_text
from trainer.config import load_config, save_config

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SCHEDULE = {
    "train.steps_per_epoch": 2,
    "train.avc_epochs": 1,
    "train.avsa_epochs": 1,
    "train.checkpoint_every": 2,
}


def test_config_overrides_round_trip(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, **{"storage.secret_access_key": "hush", "data.fov_deg": [30.0, 60.0]})
    args = config_overrides(cfg)
    assert not any("hush" in a or "secret" in a for a in args)
    back = load_config(None, args)
    assert back.data == cfg.data and back.train == cfg.train and back.storage.secret_access_key is None


def test_ray_job_submit_trains_on_two_workers(stack: Stack, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, **SCHEDULE)
    save_config(cfg, tmp_path / "train.yaml")
    env = {**os.environ, **stack.client_env()}
    entry = [str(BIN / "avsa"), "train", "--ray", "--workers", "2", "--config", str(tmp_path / "train.yaml")]
    logs = run_job(env, *entry, timeout_s=400)
    assert read_text(f"{cfg.train.checkpoint_url}/latest") == "step_00000004"
    assert "training 4 steps on 2 ranks" in logs


def test_deepspeed_launcher_with_a_hostfile(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, **SCHEDULE)
    save_config(cfg, tmp_path / "train.yaml")
    (tmp_path / "hosts").write_text("localhost slots=2\n")
    # One host, so no ssh: the launcher starts this host's ranks itself.
    launcher = "--no_ssh --node_rank 0 --master_addr 127.0.0.1"
    done = subprocess.run(
        [
            BIN / "avsa",
            "train",
            "--hostfile",
            tmp_path / "hosts",
            "--launcher-args",
            launcher,
            "--config",
            tmp_path / "train.yaml",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_text(f"{cfg.train.checkpoint_url}/latest") == "step_00000004"
    assert "training 4 steps on 2 ranks" in done.stderr + done.stdout
