"""`avsa stack up|status|down` as users run it: real processes, loopback only, nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from cluster.processes import process_tree
from cluster.stack import Stack, StackError, free_stack_config
from trainer.config import StackConfig
from trainer.typed_config import flatten

pytestmark = pytest.mark.integration


def avsa(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_up_status_down_through_the_cli_leaves_nothing_running(tmp_path: Path) -> None:
    cfg = free_stack_config(tmp_path / "state")
    overrides = [f"--stack.{k.split('.', 1)[1]}={v}" for k, v in flatten(cfg, "stack.").items()]
    up = avsa("stack", "up", *overrides, cwd=tmp_path)
    try:
        check_running_stack(tmp_path, cfg, overrides, up)
    finally:
        Stack(cfg).down()  # a failed assertion must not leave services behind


def check_running_stack(
    tmp_path: Path, cfg: StackConfig, overrides: list[str], up: subprocess.CompletedProcess[str]
) -> None:
    assert up.returncode == 0, up.stderr + up.stdout
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    roots = [psutil.Process(s["pid"]) for s in state["services"].values()]
    ours = {p.pid for root in roots for p in process_tree(root)}
    assert len(ours) > 3  # weed, mlflow (+ workers), ray start and its daemons
    # MLflow's job runner and its huey consumers (~1.6 GB, unused here) are switched off.
    mlflow_tree = process_tree(psutil.Process(state["services"]["mlflow"]["pid"]))
    assert not [p.pid for p in mlflow_tree if "mlflow.server.jobs" in " ".join(p.cmdline())]

    status = avsa("stack", "status", *overrides, cwd=tmp_path)
    assert status.returncode == 0, status.stdout
    assert status.stdout.count("healthy") == 3
    # every listening socket of every one of our processes is on loopback
    for pid in ours:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN:
                assert conn.laddr.ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1"), (
                    psutil.Process(pid).name(),
                    conn.laddr,
                )

    env = avsa("stack", "env", *overrides, cwd=tmp_path)
    assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{cfg.mlflow_port}" in env.stdout

    down = avsa("stack", "down", *overrides, cwd=tmp_path)
    assert down.returncode == 0 and "s3" in down.stdout
    assert not [pid for pid in ours if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert avsa("stack", "status", *overrides, cwd=tmp_path).returncode == 1


def test_a_taken_port_is_refused_clearly_and_nothing_starts(tmp_path: Path) -> None:
    cfg = free_stack_config(tmp_path / "state")
    before = {c.pid for c in psutil.Process(os.getpid()).children(recursive=True)}
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cfg.mlflow_port))
        squatter.listen()
        with pytest.raises(
            StackError, match=rf"port {cfg.mlflow_port} on 127.0.0.1 \(needed by mlflow\) is taken"
        ):
            Stack(cfg).up(["s3", "mlflow"])
    assert not (tmp_path / "state" / "state.json").exists()
    started = [c for c in psutil.Process(os.getpid()).children(recursive=True) if c.pid not in before]
    assert not started


def test_up_on_a_running_stack_restarts_only_the_killed_service_with_its_data(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    cfg = free_stack_config(tmp_path / "state")
    overrides = [f"--stack.{k.split('.', 1)[1]}={v}" for k, v in flatten(cfg, "stack.").items()]
    stack = Stack(cfg)
    stack.up(["s3", "mlflow"])
    try:
        before = {name: s["pid"] for name, s in stack.status().items()}
        uri = stack.client_env()["MLFLOW_TRACKING_URI"]
        experiment = MlflowClient(uri).create_experiment("kept")
        os.kill(before["mlflow"], signal.SIGKILL)  # its uvicorn worker lives on, holding the port
        status = avsa("stack", "status", *overrides, cwd=tmp_path)
        assert status.returncode == 1 and "down" in status.stdout
        up = avsa("stack", "up", "--services", "s3,mlflow", *overrides, cwd=tmp_path)
        assert up.returncode == 0, up.stderr + up.stdout
        assert "started again: mlflow" in up.stdout
        after = stack.status()
        assert after["s3"]["pid"] == before["s3"] and after["mlflow"]["pid"] != before["mlflow"]
        assert all(s["healthy"] for s in after.values())
        assert MlflowClient(uri).get_experiment(experiment).name == "kept"  # the same store
        again = avsa("stack", "up", "--services", "s3,mlflow", *overrides, cwd=tmp_path)
        assert "every service is up" in again.stdout and stack.status() == after
    finally:
        assert set(stack.down()) == {"s3", "mlflow"}
    assert stack.status() == {}
