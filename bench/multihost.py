"""Ray Train clips/s with one rank on each of two hosts vs both ranks on one host (root: namespaces).

Brings up a two-host stack (network namespaces, see :mod:`cluster.hosts`), timing it, then submits
the same 2-rank training job twice with `ray job submit`'s API: ``STRICT_PACK`` puts both ranks on
one host (gloo over loopback), ``STRICT_SPREAD`` one on each (gloo over the veth link). Both hosts
share this machine's cores, so the ratio isolates what crossing the link costs, not added compute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from mlflow.tracking import MlflowClient

from cluster.jobs import wait_for_job
from cluster.stack import Stack, free_stack_config
from dataloading.synth.batches import SYNTHETIC_SCHEME
from trainer.config import load_config, save_config
from trainer.data import TINY

JOB_TIMEOUT_S = 900.0
WARMUP_STEPS = 2  # the first steps include gloo connection set-up and allocator warm-up


def clips_per_second(stack: Stack, placement: str, steps: int, inputs: str, folder: Path) -> float:
    """Median clips/s over the steps after warm-up of a 2-rank Ray Train job placed by ``placement``."""
    from ray.job_submission import JobSubmissionClient

    env = stack.client_env()
    experiment = f"bench-multihost-{placement.lower()}-{uuid.uuid4().hex[:6]}"
    sizes = TINY if inputs == "tiny" else {"model.preset": "tiny", "data.url": SYNTHETIC_SCHEME}
    cfg = load_config(
        None,
        sizes
        | {
            "train.steps_per_epoch": steps,
            "train.avc_epochs": 1,
            "train.avsa_epochs": 0,
            "train.checkpoint_every": steps,
            "train.checkpoint_url": f"s3://{stack.cfg.bucket}/{experiment}",
            "storage.endpoint_url": env["AWS_ENDPOINT_URL"],
            "tracking.uri": env["MLFLOW_TRACKING_URI"],
            "tracking.experiment": experiment,
        },
    )
    config = folder / f"{experiment}.yaml"
    save_config(cfg, config)
    client = JobSubmissionClient(env["RAY_API_SERVER_ADDRESS"])
    entry = f"avsa train --ray --workers 2 --placement {placement} --config {config}"
    s3_env = {k: v for k, v in env.items() if k.startswith("AWS_")}
    job = client.submit_job(entrypoint=entry, runtime_env={"env_vars": s3_env})
    status, logs = wait_for_job(env["RAY_API_SERVER_ADDRESS"], job, JOB_TIMEOUT_S)
    if status != "SUCCEEDED":
        raise RuntimeError(f"{placement} job {job} {status}:\n{logs[-3000:]}")
    tracking = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = tracking.search_runs([tracking.get_experiment_by_name(experiment).experiment_id])
    history = sorted(tracking.get_metric_history(run.info.run_id, "clips_per_s"), key=lambda m: m.step)
    return statistics.median(m.value for m in history[WARMUP_STEPS:])


def main(argv: list[str]) -> float:
    """Print the stack start time and both throughputs; return two hosts / one host."""
    parser = argparse.ArgumentParser(prog="python -m bench multihost")
    parser.add_argument("--steps", type=int, default=12, help="training steps per job")
    parser.add_argument(
        "--inputs",
        choices=("paper", "tiny"),
        default="paper",
        help="paper: the reference input sizes with the tiny model; tiny: the test sizes",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench multihost: network namespaces need root (run it as root, or skip this one)")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="avsa-bench-multihost-") as tmp:
        folder = Path(tmp)
        cfg = free_stack_config(folder / "stack")
        cfg.hosts = 2
        stack = Stack(cfg)
        started = time.perf_counter()
        state = stack.up()
        up_s = time.perf_counter() - started
        try:
            os.environ.update(stack.client_env())  # the job API client needs the cluster's auth token
            hosts = [f"{h.name} {h.address}" for h in state.host_network().hosts]
            print(f"two-host stack (S3, MLflow, Ray head on a; Ray worker on b) up in {up_s:.1f} s: {hosts}")
            one = clips_per_second(stack, "STRICT_PACK", args.steps, args.inputs, folder)
            two = clips_per_second(stack, "STRICT_SPREAD", args.steps, args.inputs, folder)
        finally:
            stack.down()
    result = {"steps": args.steps, "inputs": args.inputs, "one_host": one, "two_hosts": two}
    print(json.dumps(result))
    print(f"2 ranks on one host: {one:.2f} clips/s; one rank on each of two hosts: {two:.2f} clips/s")
    return two / one
