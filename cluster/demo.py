"""`avsa demo`: the whole system end to end on embedded defaults, on one CPU machine.

Brings up the local stack (or reuses a healthy one), then runs each stage against it and
prints where to look. Each stage is a function of (context) so later stages slot in.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console

from cluster.stack import Stack
from dataloading import storage
from trainer.config import Config
from trainer.typed_config import dump_yaml, flatten

SHARD_BYTES = 64 << 20  # a typical training shard is 64 clips of ~1 MiB


@dataclass
class DemoContext:
    """What the stages share: the config, the running stack and what each stage produced."""

    cfg: Config
    stack: Stack
    console: Console
    env: dict[str, str] = field(default_factory=dict)
    results: dict[str, object] = field(default_factory=dict)

    @property
    def bucket_url(self) -> str:
        return f"s3://{self.cfg.stack.bucket}"


def stage_storage(ctx: DemoContext) -> None:
    """Write a shard-sized object to S3 atomically, read it back whole and by range."""
    url = storage.join(ctx.bucket_url, "demo", "roundtrip", "shard-000000.tar")
    payload = os.urandom(SHARD_BYTES)
    start = time.perf_counter()
    storage.write_bytes_atomic(url, payload, ctx.stack.storage())
    fs, path = storage.filesystem(url, ctx.stack.storage())
    back = fs.cat_file(path)
    middle = fs.cat_file(path, start=SHARD_BYTES // 2, end=SHARD_BYTES // 2 + 4096)
    seconds = time.perf_counter() - start
    if hashlib.sha256(back).digest() != hashlib.sha256(payload).digest():
        raise RuntimeError(f"{url}: bytes read back differ from bytes written")
    if middle != payload[SHARD_BYTES // 2 : SHARD_BYTES // 2 + 4096]:
        raise RuntimeError(f"{url}: range read returned the wrong bytes")
    mib_s = 2 * SHARD_BYTES / (1 << 20) / seconds
    ctx.console.print(f"  wrote and read back {url} ({SHARD_BYTES >> 20} MiB, {mib_s:.0f} MiB/s)")
    ctx.results["storage_url"] = url


def stage_tracking(ctx: DemoContext) -> None:
    """Log a run with params, a metric and the resolved config over HTTP to the MLflow server."""
    import mlflow

    mlflow.set_tracking_uri(ctx.env["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment(f"{ctx.cfg.tracking.experiment}-demo")
    params = {k: v for k, v in flatten(ctx.cfg).items() if not k.startswith("storage.")}
    with mlflow.start_run(run_name="demo") as run:
        mlflow.log_params(params)
        for step in range(5):
            mlflow.log_metric("demo/heartbeat", float(step), step=step)
        mlflow.log_text(dump_yaml(ctx.cfg), "config.yaml")
    ctx.results["mlflow_run"] = run.info.run_id
    ctx.console.print(f"  MLflow run {run.info.run_id} ({len(params)} params, 5 metrics, config.yaml)")


def stage_ray_job(ctx: DemoContext) -> None:
    """Submit a small job to the Ray head through its job API and wait for it."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(ctx.env["RAY_ADDRESS"])
    entrypoint = (
        'python -c "import ray; ray.init(); '
        "print('ray-demo-sum', sum(ray.get([ray.remote(lambda i: i * i).remote(i) for i in range(10)])))\""
    )
    job_id = client.submit_job(entrypoint=entrypoint)
    deadline = time.monotonic() + 300
    finished = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    while (status := client.get_job_status(job_id)) not in finished:
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray job {job_id} did not finish in 300 s")
        time.sleep(1)
    logs = client.get_job_logs(job_id)
    if status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"Ray job {job_id} ended {status}; logs:\n{logs}")
    ctx.console.print(f"  Ray job {job_id} succeeded: {logs.strip().splitlines()[-1]}")
    ctx.results["ray_job"] = job_id


STAGES: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("object storage round trip (s3fs → SeaweedFS)", stage_storage),
    ("experiment tracking (MLflow over HTTP)", stage_tracking),
    ("distributed job (ray job submit)", stage_ray_job),
]


def run_demo(cfg: Config, keep_stack: bool = False, console: Console | None = None) -> dict[str, object]:
    """Run every demo stage against a local stack; returns what the stages produced."""
    console = console or Console()
    stack = Stack(cfg.stack)
    reuse = bool(stack.status()) and all(s["healthy"] for s in stack.status().values())
    started = time.monotonic()
    if reuse:
        console.print(f"[bold]stack[/bold]: reusing the running stack from {stack.state_dir}")
    else:
        with console.status("starting the local stack (SeaweedFS S3, MLflow, Ray) …"):
            stack.up()
        console.print(f"[bold]stack[/bold]: up in {time.monotonic() - started:.0f} s")
    ctx = DemoContext(cfg=cfg, stack=stack, console=console, env=stack.client_env())
    try:
        for number, (title, stage) in enumerate(STAGES, 1):
            t0 = time.monotonic()
            console.print(f"[bold][{number}/{len(STAGES)}] {title}[/bold]")
            stage(ctx)
            console.print(f"  done in {time.monotonic() - t0:.1f} s")
        mlflow_url = ctx.env["MLFLOW_TRACKING_URI"]
        console.print(
            f"\n[bold green]demo finished in {time.monotonic() - started:.0f} s[/bold green]\n"
            f"MLflow dashboard: {mlflow_url}/#/experiments (run {ctx.results['mlflow_run']})\n"
            f"Ray dashboard:    {ctx.env['RAY_ADDRESS']}"
        )
    finally:
        if not (reuse or keep_stack):
            stack.down()
            console.print(
                "stack stopped; to browse the runs again: "
                f"[bold]mlflow ui --backend-store-uri sqlite:///{stack.state_dir / 'mlflow.db'} "
                f"--artifacts-destination {stack.state_dir / 'mlartifacts'}[/bold]"
                " (or `avsa demo --keep-stack`)"
            )
    return ctx.results
