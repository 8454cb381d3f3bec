"""Three ways to start the one training function (:func:`trainer.train.train`) on many ranks.

- :func:`run_local`: ``avsa train`` — ``train.processes`` processes on this machine (gloo on CPU).
  Under ``torchrun`` or the DeepSpeed launcher (``RANK`` already set) it trains in-process instead.
  A SIGTERM to it is passed on to every rank, which checkpoints and exits 0 (:mod:`trainer.preemption`).
- :func:`run_ray`: ``ray job submit -- avsa train --ray --workers N`` — Ray Train's TorchTrainer
  sets up the process group; Ray restarts the worker group after a failure (``--max-failures``),
  with fewer workers if the cluster shrank and ``--min-workers`` allows it, and the restarted ranks
  resume from the newest checkpoint on whatever world size they got (:mod:`trainer.elastic`).
- :func:`run_hostfile`: ``avsa train --hostfile FILE`` — the DeepSpeed launcher (pdsh/ssh) for
  clusters without Ray; it re-runs ``avsa train`` on every host with the resolved config.

:func:`train_and_export` is the pipeline step ``avsa demo`` runs: local training, then the export.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cluster.processes import free_port, set_local_rank_env
from trainer.checkpoint import read_meta, resolve
from trainer.config import Config
from trainer.credentials import is_secret, secret_env, without_secrets
from trainer.typed_config import flatten, from_dict

log = logging.getLogger(__name__)


def launched_externally() -> bool:
    """True inside torchrun, the DeepSpeed launcher or similar: the rank's environment is set."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _local_rank_main(rank: int, world_size: int, port: int, cfg: Config, resume: str | None) -> None:
    # Out of the launcher's process group: a SIGTERM to the whole group (a terminal, a container
    # runtime) reaches the ranks once, forwarded by the launcher, not twice (twice means "at once").
    os.setpgrp()
    set_local_rank_env(rank, world_size, port)
    import torch

    # N ranks share this machine's cores; torch would otherwise start one thread per core in each.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{rank} %(levelname)s %(message)s")
    from trainer.train import train

    try:
        train(cfg, resume=resume)
    except BaseException:
        traceback.print_exc()
        sys.exit(1)


def run_local(cfg: Config, resume: str | None = None) -> int:
    """Train with ``cfg.train.processes`` local ranks; returns the exit status (0 = every rank finished).

    If any rank fails the others are stopped at once (they would block in their next collective),
    so the caller can resume from the last checkpoint. A SIGTERM is forwarded to every rank: they finish
    the step, checkpoint and exit 0 (a second one: at once).
    """
    if launched_externally():
        from trainer.train import train

        train(cfg, resume=resume)
        return 0
    n = cfg.train.processes
    port = free_port()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_local_rank_main, args=(r, n, port, cfg, resume)) for r in range(n)]
    for p in procs:
        p.start()

    def forward(signum: int, frame: object) -> None:
        for p in procs:
            if p.exitcode is None and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                    os.kill(p.pid, signum)

    main = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGTERM, forward) if main else None
    try:
        while any(p.exitcode is None for p in procs):
            failed = [p for p in procs if p.exitcode not in (None, 0)]
            if failed:
                log.error(
                    "rank %d exited with %s; stopping the others", procs.index(failed[0]), failed[0].exitcode
                )
                break
            time.sleep(0.2)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        _stop(procs)
    codes = [p.exitcode for p in procs]
    return next((c for c in codes if c != 0), 0)


def _stop(procs: list[Any]) -> None:
    """Kill the ranks still running: after a rank failed they would only block in a collective (a
    SIGTERM would have them try a checkpoint with the peer that is gone)."""
    for p in procs:
        if p.exitcode is None:
            p.kill()
    for p in procs:
        p.join()


def _ray_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the process group is already up; run the shared training function."""
    import ray.train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    context = ray.train.get_context()
    os.environ.setdefault("LOCAL_RANK", str(context.get_local_rank()))
    log.info(  # where each rank landed: after a node is lost, the restarted group shows its new place
        "rank %d of %d on node %s (pid %d)",
        context.get_world_rank(),
        context.get_world_size(),
        ray.util.get_node_ip_address(),
        os.getpid(),
    )
    from trainer.train import train

    train(from_dict(Config, loop_config["config"]), resume=loop_config["resume"])


def run_ray(cfg: Config, resume: str | None = None) -> int:
    """Train with ``launch.workers`` Ray Train workers on the Ray cluster this process is connected to,
    placed by the Ray placement strategy ``launch.placement``.

    After a failure Ray restarts the whole worker group (up to ``launch.max_failures`` times) wherever
    the placement allows: with SPREAD, on the nodes still alive when a node is gone. With
    ``launch.min_workers`` below ``launch.workers`` the group is elastic (Ray Train v2's ``num_workers=(min,
    max)``): a restart takes as many workers as the cluster has room for, at least ``min_workers``,
    and Ray may restart a healthy group to grow it again when room appears. Each restart resumes
    from the newest checkpoint on its own world size (:mod:`trainer.elastic`).

    A restarted worker group cannot know which checkpoint its predecessor reached, so without an
    explicit ``resume`` every attempt uses ``auto``: the newest checkpoint under
    ``train.checkpoint_url`` if there is one. Give each job its own checkpoint URL.

    Ray Train shows the workers' config on its dashboard, so credentials set in ``cfg`` travel in the
    workers' environment instead (which the dashboard masks), and the config they get has them unset.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    la = cfg.launch
    gpus, workers, low = la.gpus_per_worker, la.workers, la.min_workers
    resources = {"CPU": 1, "GPU": gpus} if gpus else {"CPU": 1}
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"config": without_secrets(cfg), "resume": resume or "auto"},
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=(low, workers) if 0 < low < workers else workers,
            use_gpu=gpus > 0,
            resources_per_worker=resources,
            placement_strategy=la.placement,
        ),
        run_config=RunConfig(
            name=f"avsa-train-{time.strftime('%Y%m%d-%H%M%S')}",
            failure_config=FailureConfig(max_failures=la.max_failures),
            worker_runtime_env={"env_vars": secret_env(cfg)},
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        log.error("Ray training failed: %s", result.error)
        return 1
    return 0


def config_overrides(cfg: Config) -> list[str]:
    """The resolved config as ``--key=VALUE`` arguments (JSON values parse back to the same types).

    Credentials are left out of command lines (visible in ``ps``); the ranks read them from the
    standard AWS environment variables, which :func:`run_hostfile` sets from the config.
    """
    return [f"--{k}={json.dumps(v)}" for k, v in flatten(cfg).items() if not is_secret(k)]


def run_hostfile(
    cfg: Config, hostfile: str, resume: str | None = None, launcher_args: Sequence[str] = ()
) -> int:
    """Run ``avsa train`` on every host of an MPI-style hostfile (``host slots=N``) via the DeepSpeed
    launcher, which sets each rank's environment; returns the launcher's exit status.

    ``launcher_args`` go to the ``deepspeed`` launcher itself, e.g. ``--no_ssh --node_rank 0
    --master_addr HOST`` to start one host's ranks without ssh.

    On several hosts the launcher forwards only some environment variables: list ``AWS_*`` ones in
    ``.deepspeed_env`` (see the DeepSpeed docs) when checkpoints go to ``s3://``.
    """
    launcher = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
    cmd = [
        launcher,
        "--hostfile",
        hostfile,
        *launcher_args,
        "--no_local_rank",
        "--module",
        "cluster.cli",
        "train",
    ]
    cmd += config_overrides(cfg) + (["--resume", resume] if resume else [])
    env = dict(os.environ) | secret_env(cfg)
    log.info("launching: %s", " ".join(cmd[:8]) + " …")
    return subprocess.run(cmd, env=env, check=False).returncode


@dataclass
class TrainedRun:
    """Where a finished training job left its results."""

    checkpoint: str  # URL of the last checkpoint
    run_id: str | None  # MLflow run (None without tracking)
    export: dict[str, Any] | None  # the export's config.json content, with "model_version" if registered


def train_and_export(cfg: Config, out: str | None = None, resume: str | None = None) -> TrainedRun:
    """Train with ``cfg.train.processes`` local ranks, then export the last checkpoint to ``out``
    (skipped when None) and register it in MLflow; raises if any rank failed."""
    code = run_local(cfg, resume)
    if code != 0:
        raise RuntimeError(f"training failed (exit status {code}); resume with `avsa train --resume latest`")
    checkpoint = resolve("latest", cfg.train.checkpoint_url, cfg.storage)
    assert checkpoint is not None
    from trainer.export import export

    info = export(checkpoint, out, cfg) if out else None
    return TrainedRun(checkpoint, read_meta(checkpoint, cfg.storage)["run_id"], info)
