"""`avsa demo`: the whole system end to end on embedded defaults, on one CPU machine.

Brings up the local stack (or reuses a healthy one), then runs each stage against it and
prints where to look. Each stage is a function of (context) so later stages slot in.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from cluster.jobs import wait_for_job
from cluster.stack import Stack
from dataloading import seeds, storage
from trainer.config import Config, load_config
from trainer.mlflow_ui import ui_url

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
HELD_OUT_VIDEOS = 100  # other scenes (another seed): AVC-Bin, AVSA-Bin and pretext accuracy on unseen clips
MLFLOW_UI_PORT = 5000  # of the `mlflow ui` the demo suggests for browsing its runs after the stack stopped


@dataclass
class DemoContext:
    """What the stages share: the config, the running stack and what each stage produced."""

    cfg: Config
    stack: Stack
    console: Console
    env: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def url(self, *parts: str) -> str:
        """A location under this demo's prefix in the stack's bucket."""
        return storage.join(f"s3://{self.cfg.stack.bucket}", "demo", *parts)


def stage_synth(ctx: DemoContext) -> None:
    """Generate 360° videos with FOA audio, held-out scenes and the labeled evaluation sets, into S3."""
    from dataloading.synth.assets import build_catalog
    from dataloading.synth.evalsets import classification_set, doa_set
    from dataloading.synth.generate import generate, options_of

    s = ctx.cfg.synth  # sizes from demo.yaml; the demo writes into the stack's bucket
    catalog = build_catalog(s.assets or None, fetch=s.fetch)
    opts = options_of(s, ctx.stack.storage(), out=ctx.url("raw"))
    summary = generate(opts, catalog)
    held_out = replace(
        opts, out=ctx.url("raw-heldout"), videos=HELD_OUT_VIDEOS, seed=opts.seed + seeds.HELD_OUT_SEED_OFFSET
    )
    held = generate(held_out, catalog)
    storage = ctx.stack.storage()
    # The two labeled sets are single-process generators: one each on the two cores (~40 s; their
    # progress bars would overwrite each other).
    ctx.console.print("  labeled sets: classification and DOA, in parallel …")
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        cls_job = pool.submit(
            classification_set,
            ctx.url("eval", "classification"),
            catalog,
            s.classification_clips,
            s.seed,
            storage=storage,
            progress=False,
        )
        doa_job = pool.submit(
            doa_set, ctx.url("eval", "doa"), catalog, s.doa_clips, s.seed, storage=storage, progress=False
        )
        cls, doa = cls_job.result(), doa_job.result()
    made = s.videos - len(summary["failed"])
    ctx.console.print(
        f"  {made} training and {HELD_OUT_VIDEOS - len(held['failed'])} held-out scenes of "
        f"{s.seconds:.0f} s -> {opts.out}; eval sets: classification {len(cls['classes'])} classes × "
        f"{s.classification_clips} clips per split, DOA {doa['splits']['train']['samples']} + "
        f"{doa['splits']['test']['samples']} clips"
    )


def preprocess_command(cfg: Config, command: list[str]) -> list[str]:
    """``command`` (``avsa preprocess`` with its input and output flags) followed by the rest of the
    demo's ``preprocess`` section as dotted overrides. The section's input and output are left out:
    they would contradict ``--input`` and ``--output``, which the CLI refuses."""
    from cluster.launch import config_overrides

    own = ("--preprocess.input=", "--preprocess.output=")
    section = [a for a in config_overrides(cfg) if a.startswith("--preprocess.") and not a.startswith(own)]
    return [*command, *section]


def stage_preprocess(ctx: DemoContext) -> None:
    """Shard the videos with `avsa preprocess`, submitted to the Ray head as users do."""
    from ray.job_submission import JobSubmissionClient

    s3_env = {k: v for k, v in ctx.env.items() if k.startswith("AWS_")}
    client = JobSubmissionClient(ctx.env["RAY_API_SERVER_ADDRESS"])
    jobs = {}
    for raw, shards in (("raw", "shards"), ("raw-heldout", "shards-heldout")):
        command = [
            "avsa",
            "preprocess",
            "--input",
            ctx.url(raw),
            "--output",
            ctx.url(shards),
            "--no-progress",
        ]
        entrypoint = shlex.join(preprocess_command(ctx.cfg, command))
        jobs[shards] = client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": s3_env})
        ctx.console.print(f"  ray job {jobs[shards]}: {shlex.join(command)}")
    for shards, job_id in jobs.items():
        status, logs = wait_for_job(ctx.env["RAY_API_SERVER_ADDRESS"], job_id, timeout_s=1800, poll_s=2)
        if status != "SUCCEEDED":
            raise RuntimeError(f"preprocessing job {job_id} ended {status}:\n{logs[-3000:]}")
        fs, path = storage.filesystem(ctx.url(shards, "manifest.json"), ctx.stack.storage())
        totals = json.loads(fs.cat_file(path))["totals"]
        ctx.console.print(f"  {shards}/manifest.json: {json.dumps(totals)}")


def stage_train(ctx: DemoContext) -> None:
    """Pretrain (AVC then AVSA) with DeepSpeed on local ranks, checkpoints on S3, MLflow over HTTP."""
    from cluster.launch import train_and_export

    export_url = ctx.cfg.train.checkpoint_url.rsplit("/", 1)[0] + "/export"  # beside this run's checkpoints
    trained = train_and_export(ctx.cfg, out=export_url)
    ctx.results["run_id"], ctx.results["checkpoint"] = trained.run_id, trained.checkpoint
    ctx.console.print(f"  run {trained.run_id}; last checkpoint {trained.checkpoint}; export {export_url}")


def stage_eval(ctx: DemoContext) -> None:
    """The evaluation service evaluates every checkpoint of the run once; print the comparison table."""
    from evaluation.service import EvalService, run_reports
    from evaluation.suite import format_table

    suite = replace(
        ctx.cfg.eval,
        clips_url=ctx.url("shards-heldout"),
        classification_url=ctx.url("eval", "classification"),
        doa_url=ctx.url("eval", "doa"),
        experiments=(ctx.cfg.tracking.experiment,),
    )
    uri = ctx.env["MLFLOW_TRACKING_URI"]
    service = EvalService(uri, suite, ctx.cfg.storage, trusted_roots=[ctx.cfg.train.checkpoint_url])
    service.run_once()
    t = ctx.cfg.train
    avc_step = t.avc_epochs * t.steps_per_epoch
    labels = {avc_step: "AVC stage", avc_step + t.avsa_epochs * t.steps_per_epoch: "AVSA stage"}
    table = format_table(run_reports(uri, ctx.results["run_id"], labels))
    ctx.results["table"] = table
    ctx.console.print(table, markup=False, highlight=False, soft_wrap=True)


STAGES: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("demo data: 360° videos with FOA audio (avsa synth)", stage_synth),
    ("preprocessing on Ray (ray job submit -- avsa preprocess)", stage_preprocess),
    ("pretraining AVC -> AVSA with DeepSpeed, 2 ranks (avsa train), then export", stage_train),
    ("evaluation service: every checkpoint once, with baselines (avsa eval-service)", stage_eval),
]


def demo_config(config_file: str | None, overrides: Sequence[str] | Mapping[str, Any] = ()) -> Config:
    """Defaults < demo.yaml < the user's --config file < command-line overrides."""
    return load_config([DEMO_CONFIG, *([config_file] if config_file else [])], overrides)


def with_stack(cfg: Config, stack: Stack) -> Config:
    """``cfg`` pointed at the running stack: S3 for data and checkpoints, its MLflow for tracking."""
    env = stack.client_env()
    bucket = f"s3://{cfg.stack.bucket}/demo"
    run = time.strftime("%Y%m%d-%H%M%S")  # each demo trains from scratch into its own prefix
    return replace(
        cfg,
        storage=stack.storage(),
        data=replace(cfg.data, url=f"{bucket}/shards"),
        train=replace(cfg.train, checkpoint_url=f"{bucket}/runs/{run}/checkpoints"),
        tracking=replace(
            cfg.tracking, uri=env["MLFLOW_TRACKING_URI"], experiment=f"{cfg.tracking.experiment}-demo"
        ),
    )


def run_demo(cfg: Config, keep_stack: bool = False, console: Console | None = None) -> dict[str, Any]:
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
    os.environ.update(stack.ray_auth_env())  # this process submits jobs and waits on them itself
    ctx = DemoContext(cfg=with_stack(cfg, stack), stack=stack, console=console, env=stack.client_env())
    experiment_id = None
    try:
        for number, (title, stage) in enumerate(STAGES, 1):
            t0 = time.monotonic()
            console.print(f"[bold][{number}/{len(STAGES)}] {title}[/bold]")
            stage(ctx)
            console.print(f"  done in {time.monotonic() - t0:.1f} s")
        from mlflow.tracking import MlflowClient

        mlflow_url, run_id = ctx.env["MLFLOW_TRACKING_URI"], ctx.results["run_id"]
        experiment_id = MlflowClient(mlflow_url).get_run(run_id).info.experiment_id
        console.print(
            f"\n[bold green]demo finished in {time.monotonic() - started:.0f} s[/bold green]\n"
            f"MLflow dashboard: {ui_url(mlflow_url, experiment_id)}\n"
            f"  experiment {ctx.cfg.tracking.experiment}, run {ui_url(mlflow_url, experiment_id, run_id)}\n"
            f"Ray dashboard:    {ctx.env['RAY_API_SERVER_ADDRESS']}{stack.sign_in_hint()}",
            soft_wrap=True,  # a link broken over two lines cannot be opened
        )
    finally:
        if not (reuse or keep_stack):
            stack.down()
            then = (
                f", then open {ui_url(f'http://127.0.0.1:{MLFLOW_UI_PORT}', experiment_id)}"
                if experiment_id
                else ""
            )
            console.print(
                "stack stopped; to browse the runs again: "
                f"[bold]mlflow ui --port {MLFLOW_UI_PORT} --backend-store-uri sqlite:///"
                f"{stack.state_dir / 'mlflow.db'} --artifacts-destination {stack.state_dir / 'mlartifacts'}"
                f"[/bold]{then} (or `avsa demo --keep-stack`)",
                soft_wrap=True,
            )
    return ctx.results
