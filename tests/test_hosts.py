"""A stack across two virtual hosts (network namespaces): services on host a, a Ray worker on b."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cluster import hosts
from cluster.processes import process_tree
from cluster.stack import Stack, free_stack_config
from tests.helpers import run_job

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def link_names() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_hosts_are_separate_and_removed_again(tmp_path: Path) -> None:
    net = hosts.create(str(tmp_path), 2)
    try:
        a, b = net.hosts
        assert a.address != b.address and {a.netns, b.netns} <= netns_names()
        # b reaches a by address over the veth link, and has its own loopback (not a's)
        probe = "import socket; s = socket.create_connection(('{}', {}), timeout=3); print('ok')"
        with subprocess.Popen(a.command([sys.executable, "-c", LISTEN_ONCE.format(a.address)])) as server:
            time.sleep(1.0)
            reach = subprocess.run(
                b.command([sys.executable, "-c", probe.format(a.address, 47000)]),
                capture_output=True,
                text=True,
            )
            server.wait(timeout=10)
        assert reach.stdout.strip() == "ok", reach.stderr
        loopback = subprocess.run(
            b.command([sys.executable, "-c", probe.format("127.0.0.1", 47000)]),
            capture_output=True,
            text=True,
        )
        assert loopback.returncode != 0  # a's port is not on b's loopback: separate network stacks
    finally:
        net.destroy()
    assert not {a.netns, b.netns} & netns_names()
    assert not (set(net.links) | {net.bridge}) & link_names()


LISTEN_ONCE = (
    "import socket; s = socket.socket(); s.bind(('{}', 47000)); s.listen(); c, _ = s.accept(); c.close()"
)


def test_two_host_stack_runs_ray_tasks_on_both_and_serves_b(tmp_path: Path) -> None:
    cfg = free_stack_config(tmp_path / "state")
    cfg.hosts, cfg.ray_num_cpus = 2, 1
    stack = Stack(cfg)
    state = stack.up()
    try:
        pids = {p.pid for proc in state.services.values() for p in process_tree(proc.handle())}
        a, b = state.host_network().hosts
        assert set(state.services) == {"s3", "mlflow", "ray", "ray@b"}
        assert all(item["healthy"] for item in stack.status().values())
        env = {**os.environ, **stack.client_env()}

        # host b reaches S3 (signed) and MLflow on host a by address
        from_b = (
            "import os, requests, s3fs; "
            "fs = s3fs.S3FileSystem(endpoint_url=os.environ['AWS_ENDPOINT_URL']); "
            "fs.pipe_file(os.environ['AVSA_BUCKET'] + '/from-b.txt', b'hello from b'); "
            "print(requests.get(os.environ['MLFLOW_TRACKING_URI'] + '/health').status_code)"
        )
        out = subprocess.run(
            b.command([sys.executable, "-c", from_b]), env=env, capture_output=True, text=True
        )
        assert out.stdout.strip() == "200", out.stderr
        assert state.endpoints["s3"].startswith(f"http://{a.address}:")

        # a job submitted to the head runs tasks on both nodes
        job = (
            "import ray, time; ray.init(); "
            "f = ray.remote(num_cpus=1)(lambda: (time.sleep(2), ray.util.get_node_ip_address())[1]); "
            "print('nodes', sorted(set(ray.get([f.remote() for _ in range(6)]))))"
        )
        logs = run_job(env, "python", "-c", job, timeout_s=300)
        assert re.search(rf"nodes \['{re.escape(a.address)}', '{re.escape(b.address)}'\]", logs)
    finally:
        stack.down()
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not {h.netns for h in state.host_network().hosts} & netns_names()
