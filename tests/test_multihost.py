"""Runs across two hosts: network namespaces on this machine (see :mod:`cluster.hosts`), with the
Ray head, S3 and MLflow on host a and a Ray worker node on host b, each with 2 CPUs.

Everything Ray runs is submitted with `ray job submit` to the head: preprocessing with actors on
both hosts, Ray Train with one rank per host (gloo over the veth link, checkpoints on S3), and the
same two jobs again with host b killed in the middle. The DeepSpeed launcher path starts one
launcher per host from a hostfile naming both.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from cluster.hosts import INTERFACE, VirtualHost
from cluster.processes import free_port, wait_for
from cluster.stack import Stack, free_stack_config
from dataloading.schema import MANIFEST_NAME
from dataloading.storage import filesystem, join
from tests.helpers import (
    VIDEOS,
    check_dataset,
    finish_job,
    submit_job,
    synth_videos,
    tiny_config,
)
from trainer.checkpoint import read_text
from trainer.config import Config, save_config
from trainer.export import consolidated_state_dict

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

BIN = Path(sys.executable).parent
PREPROCESS = ["--clip-seconds", "1", "--shard-size", "1", "--size", "256x128", "--fps", "16", "--no-progress"]
# 9 steps, a checkpoint every 3: host b dies after the first one, mid-AVC stage.
SCHEDULE = {
    "train.steps_per_epoch": 3,
    "train.avc_epochs": 2,
    "train.avsa_epochs": 1,
    "train.checkpoint_every": 3,
    "train.lr": 1e-3,
}
JOB_TIMEOUT_S = 480
# Actors get work once they have started, and a host's first actor takes seconds to start: videos of
# 4.5 s make 4 one-clip shards each, work enough that host b's actor is up before host a's is done.
CLIPS_PER_VIDEO = 4


@dataclass
class Cluster:
    stack: Stack
    a: VirtualHost
    b: VirtualHost
    env: dict[str, str]  # this process's environment pointed at the cluster

    @property
    def bucket(self) -> str:
        return f"s3://{self.stack.cfg.bucket}"

    def exists(self, url: str) -> bool:
        fs, path = filesystem(url, self.stack.storage())
        fs.invalidate_cache()
        return fs.exists(path)

    def submit(self, *entrypoint: str) -> subprocess.Popen:
        """`ray job submit` in the background; S3 credentials reach the job's processes on both hosts
        via the runtime env."""
        s3_env = {k: v for k, v in self.env.items() if k.startswith("AWS_")}
        # Ray's log deduplication drops words with digits, so the worker group listing's lines
        # ("- (ip=…, pid=…) world_rank=…") all look alike, and it folds them once any other process has
        # printed a line that looks like them. The tests read that listing: keep every line.
        return submit_job(self.env, *entrypoint, env_vars={**s3_env, "RAY_DEDUP_LOGS": "0"})

    def cpus(self) -> tuple[float, float]:
        """(free, total) CPUs as `ray status` reports them ((0, 0) when it cannot say)."""
        out = subprocess.run(
            [BIN / "ray", "status"], env=self.env, capture_output=True, text=True, timeout=60
        ).stdout
        used = re.search(r"([\d.]+)/([\d.]+) CPU", out)
        return (float(used.group(2)) - float(used.group(1)), float(used.group(2))) if used else (0.0, 0.0)

    def wait_settled(self, timeout_s: float = 120) -> None:
        """Wait until both hosts' CPUs are registered and free: a test that places work on both needs
        host b back after a previous test restarted it, and the previous test's actors hold CPUs for a
        while after it ends. `ray status` is a periodic snapshot, so one good reading can still be
        stale: ask for three in a row."""
        readings: list[tuple[float, float]] = []

        def settled() -> bool:
            readings.append(self.cpus())
            return len(readings) >= 3 and all(r == (4, 4) for r in readings[-3:])

        assert wait_for(settled, timeout_s=timeout_s, interval_s=2), f"(free, total) CPUs: {readings[-3:]}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cfg = free_stack_config(tmp_path_factory.mktemp("two-hosts"))
    cfg.hosts, cfg.ray_num_cpus = 2, 2
    stack = Stack(cfg)
    state = stack.up()
    try:
        a, b = state.host_network().hosts
        yield Cluster(stack, a, b, {**os.environ, **stack.client_env()})
    finally:
        stack.down()


@pytest.fixture(scope="module")
def raw(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Synthetic 360° videos on the cluster's S3."""
    folder = tmp_path_factory.mktemp("raw")
    synth_videos(folder, videos=VIDEOS, seconds=CLIPS_PER_VIDEO + 0.5, size="256x128", fps=16)
    url = f"{cluster.bucket}/raw-{uuid.uuid4().hex[:8]}"
    fs, path = filesystem(url, cluster.stack.storage())
    for video in sorted(folder.glob("video_*.mp4")):
        fs.put_file(str(video), f"{path}/{video.name}")
    return url


def manifest_of(cluster: Cluster, output: str) -> dict:
    fs, path = filesystem(join(output, MANIFEST_NAME), cluster.stack.storage())
    return json.loads(fs.cat_file(path))


def check_complete(cluster: Cluster, output: str, manifest: dict) -> None:
    """Every clip in exactly one shard, every input accounted for, every shard readable."""
    assert manifest["totals"]["accepted"] == manifest["totals"]["inputs"] == VIDEOS
    assert len(manifest["shards"]) == VIDEOS * CLIPS_PER_VIDEO  # one clip per shard
    check_dataset(output, manifest, cluster.stack.storage())


def test_preprocessing_actors_run_on_both_hosts_and_the_manifest_says_which(
    cluster: Cluster, raw: str
) -> None:
    output = raw.replace("/raw-", "/shards-")
    # One actor per host (spread), so that host a's cannot have finished the work on its own by the
    # time host b's has started.
    command = ["avsa", "preprocess", "--input", raw, "--output", output, "--workers", "2", *PREPROCESS]
    cluster.wait_settled()  # the actors are spread over the nodes the head knows of
    logs = finish_job(cluster.submit(*command))
    assert f"{VIDEOS} of {VIDEOS} inputs accepted" in logs
    manifest = manifest_of(cluster, output)
    check_complete(cluster, output, manifest)
    nodes = {shard["node"] for shard in manifest["shards"].values()}
    assert nodes == {cluster.a.address, cluster.b.address}
    assert sum(manifest["run"]["shards_by_node"].values()) == len(manifest["shards"])
    assert f"(by node: {cluster.a.address} " in logs  # the user sees the spread too


def train_config(cluster: Cluster, tmp: Path, name: str) -> tuple[Config, Path]:
    """A tiny synthetic-data run checkpointing to the cluster's S3, tracked on its MLflow; saved as
    a YAML file the job reads (credentials stay out of it: the jobs get them from the env)."""
    cfg = tiny_config(
        tmp,
        **SCHEDULE,
        **{
            "train.checkpoint_url": f"{cluster.bucket}/{name}/checkpoints",
            "tracking.uri": cluster.env["MLFLOW_TRACKING_URI"],
            "tracking.experiment": name,
            "storage.endpoint_url": cluster.env["AWS_ENDPOINT_URL"],
        },
    )
    path = tmp / f"{name}.yaml"
    save_config(cfg, path)
    return cfg, path


def ray_train(cluster: Cluster, config: Path, *workers: str) -> subprocess.Popen:
    """`avsa train --ray` with 2 workers spread over the hosts (or the ``workers`` flags given)."""
    workers = workers or ("--workers", "2")
    entry = ["avsa", "train", "--ray", *workers, "--placement", "SPREAD", "--max-failures", "2"]
    return cluster.submit(*entry, "--config", str(config))


def final_state(cluster: Cluster, cfg: Config) -> dict[str, torch.Tensor]:
    root = cfg.train.checkpoint_url
    assert read_text(f"{root}/latest", cluster.stack.storage()) == "step_00000009"
    return consolidated_state_dict(f"{root}/step_00000009", cluster.stack.storage())[0]


def ranks_on(logs: str) -> list[tuple[int, str]]:
    """(rank, node address) of every rank start, in order."""
    return [(int(r), node) for r, node in re.findall(r"rank (\d) of 2 on node ([\d.]+)", logs)]


def worker_groups(logs: str) -> list[list[str]]:
    """The node address of each rank of every worker group Ray Train started, in order, from the
    controller's listing; each listing must be whole (as long as the size it states)."""
    groups: list[list[str]] = []
    sizes: list[int] = []
    for line in logs.splitlines():
        if found := re.search(r"Started training worker group of size (\d+)", line):
            groups.append([])
            sizes.append(int(found.group(1)))
        elif groups and (found := re.search(r"- \(ip=([\d.]+), pid=\d+\) world_rank=\d+", line)):
            groups[-1].append(found.group(1))
    assert [len(g) for g in groups] == sizes, f"listings of {sizes} workers hold {groups}"
    return groups


@dataclass
class Finished:
    state: dict[str, torch.Tensor]  # final parameters and buffers
    logs: str


@pytest.fixture(scope="module")
def uninterrupted(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """The Ray Train run with no failure (the reference for the others)."""
    cfg, path = train_config(cluster, tmp_path_factory.mktemp("straight"), f"straight-{uuid.uuid4().hex[:6]}")
    cluster.wait_settled()
    logs = finish_job(ray_train(cluster, path))
    return Finished(final_state(cluster, cfg), logs)


def test_ray_train_puts_one_rank_on_each_host(cluster: Cluster, uninterrupted: Finished) -> None:
    assert "training 9 steps on 2 ranks" in uninterrupted.logs
    placements = ranks_on(uninterrupted.logs)
    assert sorted(rank for rank, _ in placements) == [0, 1]
    assert sorted(node for _, node in placements) == sorted([cluster.a.address, cluster.b.address])


def test_deepspeed_launcher_with_a_hostfile_naming_both_hosts(
    cluster: Cluster, uninterrupted: Finished, tmp_path: Path
) -> None:
    """One `avsa train --hostfile` per host (the launcher's no-ssh mode, as on clusters without
    passwordless ssh); the result equals the Ray Train run's: same ranks, same data, same steps."""
    cfg, path = train_config(cluster, tmp_path, f"hostfile-{uuid.uuid4().hex[:6]}")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"{cluster.a.address} slots=1\n{cluster.b.address} slots=1\n")
    port = free_port()
    # Ray gives each 1-CPU worker one OpenMP thread; so do we, for bit-equal float results.
    env = {**cluster.env, "GLOO_SOCKET_IFNAME": INTERFACE, "OMP_NUM_THREADS": "1"}
    launchers = []
    for node_rank, host in enumerate((cluster.a, cluster.b)):
        launcher = f"--no_ssh --node_rank {node_rank} --master_addr {cluster.a.address} --master_port {port}"
        cmd = [
            "avsa",
            "train",
            "--hostfile",
            str(hostfile),
            "--launcher-args",
            launcher,
            "--config",
            str(path),
        ]
        launchers.append(
            subprocess.Popen(
                host.command([str(BIN / cmd[0]), *cmd[1:]]),
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=JOB_TIMEOUT_S)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "training 9 steps on 2 ranks" in outputs[0]
    straight = final_state(cluster, cfg)
    assert straight.keys() == uninterrupted.state.keys()
    assert all(torch.equal(straight[k], uninterrupted.state[k]) for k in straight)


def test_host_b_dies_mid_training_and_the_restarted_run_ends_where_an_uninterrupted_one_does(
    cluster: Cluster, uninterrupted: Finished, tmp_path: Path
) -> None:
    cfg, path = train_config(cluster, tmp_path, f"node-loss-{uuid.uuid4().hex[:6]}")
    cluster.wait_settled()
    job = ray_train(cluster, path)
    try:
        first = f"{cfg.train.checkpoint_url}/latest"
        assert wait_for(lambda: cluster.exists(first), timeout_s=JOB_TIMEOUT_S, interval_s=0.5), first
        cluster.stack.kill_node("b")  # mid-run: the first checkpoint is out, 6 steps to go
        logs = finish_job(job)
    finally:
        if job.poll() is None:
            job.kill()
        cluster.stack.restart_node("b")  # the next test starts with both hosts again
    placements = ranks_on(logs)
    assert {node for _, node in placements[:2]} == {cluster.a.address, cluster.b.address}
    assert {node for _, node in placements[2:]} == {cluster.a.address}  # restarted where it could
    resumed = final_state(cluster, cfg)
    assert all(torch.equal(resumed[k], uninterrupted.state[k]) for k in uninterrupted.state)


def test_host_b_dies_and_the_elastic_group_goes_on_with_the_ranks_left(
    cluster: Cluster, tmp_path: Path
) -> None:
    """4 workers (2 per host) with --min-workers 2: after host b is lost Ray restarts the group with the
    2 workers host a has room for, and they resume the 4-rank checkpoint (world size 4 -> 2)."""
    cfg, path = train_config(cluster, tmp_path, f"elastic-{uuid.uuid4().hex[:6]}")
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        _AutoscalingCoordinatorActor as Coordinator,
    )

    cluster.wait_settled()  # an elastic group starts with the workers there is room for...
    # ...as the cluster's AutoscalingCoordinator sees it: a detached actor that earlier Ray Train runs
    # started, which looks at the nodes once a tick. Until it has looked since the previous test
    # restarted host b, it counts only host a's CPUs (measured: a group of 2 instead of 4).
    time.sleep(Coordinator.TICK_INTERVAL_S + 2)
    job = ray_train(cluster, path, "--workers", "4", "--min-workers", "2")
    try:
        first = f"{cfg.train.checkpoint_url}/latest"
        assert wait_for(lambda: cluster.exists(first), timeout_s=JOB_TIMEOUT_S, interval_s=0.5), first
        cluster.stack.kill_node("b")
        logs = finish_job(job)
    finally:
        if job.poll() is None:
            job.kill()
        cluster.stack.restart_node("b")
    groups = worker_groups(logs)
    assert sorted(groups[0]) == sorted([cluster.a.address] * 2 + [cluster.b.address] * 2)
    assert groups[-1] == [cluster.a.address] * 2  # what was left
    assert "training 9 steps on 4 ranks" in logs and "(saved by 4 ranks, now 2)" in logs
    assert read_text(f"{cfg.train.checkpoint_url}/latest", cluster.stack.storage()) == "step_00000009"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cluster.env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert run.info.status == "FINISHED"  # one run across both attempts
    # Rank 0 may have been on host b: its last unsent metrics went with it. The resumed steps are there.
    assert set(range(4, 10)) <= {m.step for m in client.get_metric_history(run.info.run_id, "loss")}


def test_host_b_dies_mid_preprocessing_and_its_shards_are_redone(cluster: Cluster, raw: str) -> None:
    output = raw.replace("/raw-", "/node-loss-")
    # One actor per host, so host a has a free CPU for the actor Ray restarts after losing b.
    command = ["avsa", "preprocess", "--input", raw, "--output", output, "--workers", "2", *PREPROCESS]
    cluster.wait_settled()
    job = cluster.submit(*command)
    try:
        first = f"{output}/shard-000000.tar"
        assert wait_for(lambda: cluster.exists(first), timeout_s=JOB_TIMEOUT_S, interval_s=0.2), first
        cluster.stack.kill_node("b")
        finish_job(job)
    finally:
        if job.poll() is None:
            job.kill()
    manifest = manifest_of(cluster, output)
    check_complete(cluster, output, manifest)
    assert manifest["run"]["shards"] == {"written": VIDEOS * CLIPS_PER_VIDEO}
