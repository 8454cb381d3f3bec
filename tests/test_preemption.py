"""Graceful preemption: SIGTERM on one rank of `avsa train` (real DeepSpeed ranks, gloo, a real MLflow
server) ends every rank with a checkpoint and exit 0, and the resumed run ends bit for bit where an
uninterrupted one does; a second SIGTERM, or the grace time running out, exits at once even while the
rank is stuck in a collective."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
import torch
from mlflow.tracking import MlflowClient

from cluster.processes import free_port, wait_for
from cluster.stack import Stack
from dataloading.config import DataConfig
from dataloading.loader import build_loader
from dataloading.synth.samples import write_dataset
from tests.helpers import tiny_config
from trainer.checkpoint import read_meta, resolve
from trainer.config import save_config
from trainer.export import consolidated_state_dict
from trainer.preemption import EXIT_AT_ONCE, Preemption
from trainer.tracking import PREEMPTED, PREEMPTED_AT

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)

# Rank 1 joins the group and never enters the collective, so rank 0 stays inside it: a C++ wait in
# which Python cannot run signal handlers.
BLOCKED = """
import datetime, sys, time
import torch, torch.distributed as dist
from trainer.preemption import Preemption
rank, port, grace = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=600))
if rank == 1:
    time.sleep(600)
with Preemption(grace):
    print("ready", flush=True)
    dist.all_reduce(torch.ones(1))
"""


def _blocked_pair(grace_s: float) -> tuple[subprocess.Popen, subprocess.Popen]:
    port = str(free_port())
    start = [sys.executable, "-c", BLOCKED]
    peer = subprocess.Popen([*start, "1", port, str(grace_s)], cwd=REPO)
    rank0 = subprocess.Popen([*start, "0", port, str(grace_s)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert rank0.stdout is not None and rank0.stdout.readline().strip() == "ready"
    time.sleep(1.0)  # inside all_reduce by now
    return rank0, peer


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


def test_a_second_sigterm_exits_at_once_even_inside_a_blocked_collective() -> None:
    rank0, peer = _blocked_pair(grace_s=300)
    try:
        rank0.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # apart, so the kernel does not merge the two
        assert rank0.poll() is None  # the first one asks for a checkpoint, it does not kill
        sent = time.monotonic()
        rank0.send_signal(signal.SIGTERM)
        assert rank0.wait(10) == EXIT_AT_ONCE
        assert time.monotonic() - sent < 5.0
    finally:
        _stop(rank0, peer)


LEAVE_WITH_A_CHILD = """
import multiprocessing, signal, time
from trainer.preemption import Preemption

def worker():
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # so that the exit's terminate() ends it
    time.sleep(60)

with Preemption(60.0):
    child = multiprocessing.get_context("fork").Process(target=worker, daemon=True)
    child.start()  # like a loader worker: it holds a copy of the watcher's pipe and outlives the loop
print("left", flush=True)
"""


def test_leaving_does_not_wait_for_processes_forked_inside() -> None:
    out = subprocess.run(
        [sys.executable, "-c", LEAVE_WITH_A_CHILD], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.strip() == "left", out.stderr


def test_the_grace_time_running_out_exits_at_once() -> None:
    rank0, peer = _blocked_pair(grace_s=3)
    try:
        sent = time.monotonic()
        rank0.send_signal(signal.SIGTERM)
        assert rank0.wait(30) == EXIT_AT_ONCE
        assert 2.5 < time.monotonic() - sent < 15.0
    finally:
        _stop(rank0, peer)


SCHEDULE = {
    "train.steps_per_epoch": 6,
    "train.avc_epochs": 2,
    "train.avsa_epochs": 1,
    "train.checkpoint_every": 100,
    "train.lr": 1e-3,
    "train.processes": 2,
}


def _avsa_train(config: Path, cwd: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cluster.cli", "train", "--config", str(config), *args]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _rank_pids(launcher: subprocess.Popen) -> list[int]:
    """The rank processes `avsa train` spawned (not multiprocessing's resource tracker)."""
    children = psutil.Process(launcher.pid).children()
    return sorted(c.pid for c in children if "resource_tracker" not in " ".join(c.cmdline()))


@pytest.mark.integration
@pytest.mark.timeout(1800)  # three 2-rank runs of `avsa train`
def test_sigterm_to_one_rank_checkpoints_exits_zero_and_resumes_bit_for_bit(
    stack: Stack, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    uri = stack.client_env()["MLFLOW_TRACKING_URI"]
    name = f"preempt-{uuid.uuid4().hex[:8]}"
    straight_cfg = tiny_config(tmp_path / "straight", **SCHEDULE)
    save_config(straight_cfg, tmp_path / "straight.yaml")
    cfg = tiny_config(tmp_path / "run", **SCHEDULE, **{"tracking.uri": uri, "tracking.experiment": name})
    save_config(cfg, tmp_path / "run.yaml")
    root = cfg.train.checkpoint_url

    straight = _avsa_train(tmp_path / "straight.yaml", tmp_path, env)
    out, _ = straight.communicate(timeout=900)
    assert straight.returncode == 0, out[-3000:]

    job = _avsa_train(tmp_path / "run.yaml", tmp_path, env)
    lines: list[str] = []
    for line in job.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if "step 10/18" in line:
            break
    ranks = _rank_pids(job)
    assert len(ranks) == 2, lines
    sent = time.monotonic()
    os.kill(ranks[-1], signal.SIGTERM)  # one of the two ranks, in the middle of step 11 or so
    out, _ = job.communicate(timeout=300)
    latency = time.monotonic() - sent
    assert job.returncode == 0, "".join(lines)[-2000:] + out[-3000:]  # every rank exited 0
    assert "preempted: stopped after step" in out and latency < cfg.train.preempt_grace_s

    tag = resolve("latest", root)
    assert tag is not None
    meta = read_meta(tag)
    step = meta["step"]
    assert 11 <= step <= 13 and sorted(os.listdir(tag)) == sorted([*meta["files"], "meta.json"])
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert run.info.status == "KILLED" and run.data.tags[PREEMPTED] == "true"
    assert run.data.tags[PREEMPTED_AT] == str(step)
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == step  # no step past it

    resumed = _avsa_train(tmp_path / "run.yaml", tmp_path, env, "--resume", "auto")
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out[-3000:]
    final = consolidated_state_dict(f"{root}/step_00000018")[0]
    reference = consolidated_state_dict(f"{straight_cfg.train.checkpoint_url}/step_00000018")[0]
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in reference)  # bit for bit

    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[PREEMPTED] == "false"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, 19))  # each step once, across both attempts
    # Tracking touched only its server: no stray sqlite store beside the run (the Tracker.finish defect).
    assert not list(tmp_path.rglob("mlflow.db")) and not (tmp_path / "mlruns").exists()
    log.info("SIGTERM to exit of every rank: %.1f s (checkpoint at step %d)", latency, step)


def test_a_sigterm_to_every_loader_worker_is_not_the_ranks_and_the_workers_go_on(tmp_path: Path) -> None:
    """A scheduler that terminates every process of a job (Slurm does) signals the loader workers too.
    They must neither die of it (the rank reads one more batch before it stops) nor pass it on to the
    rank's watcher as the rank's own (two would make a second SIGTERM: an exit without a checkpoint).
    A SIGTERM from the rank itself (torch's shutdown of its workers) still ends a worker."""
    write_dataset(str(tmp_path), [4, 4], seconds=1.5)
    cfg = DataConfig(url=str(tmp_path), batch_size=2, frames=4, crop_size=32, n_mels=16, workers=2)
    others = set(psutil.Process().children())  # the session's services
    with Preemption(grace_s=60) as preemption:
        batches = iter(build_loader(cfg))
        next(batches)  # the workers are up
        workers = [p for p in psutil.Process().children() if p not in others]
        assert len(workers) == 2
        for worker in workers:  # from another process, as a scheduler sends it
            subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)
        time.sleep(1.0)
        assert not preemption.requested
        assert all(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
        assert next(batches).video.shape[0] == 2
        os.kill(os.getpid(), signal.SIGTERM)  # the rank's own: one, so it finishes the step
        assert wait_for(lambda: preemption.requested, timeout_s=10)
        assert preemption.installed  # still here: no second SIGTERM was counted

        os.kill(workers[0].pid, signal.SIGTERM)  # from the rank: the worker ends, successfully
        assert workers[0].wait(timeout=10) == 0
        del batches
