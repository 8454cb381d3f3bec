"""`avsa train`: pretrain the encoders (local processes, Ray Train, or the DeepSpeed launcher)."""

from __future__ import annotations

import argparse
import shlex

from cluster.cli import add_config_arguments
from trainer.config import Config

EPILOG = """\
examples:
  avsa train --train.processes 2 --data.url synthetic:// --model.preset tiny
  avsa train --resume latest --train.checkpoint_url s3://avsa/runs/a
  ray job submit -- avsa train --ray --workers 8 --gpus-per-worker 1 --max-failures 3
  ray job submit -- avsa train --ray --workers 8 --min-workers 4 --max-failures 3   # elastic
  avsa train --hostfile hosts.txt          # lines like "node-1 slots=8"; DeepSpeed launcher
"""


PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray placement group strategies


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="pretrain the audio and video encoders (AVC then AVSA) with DeepSpeed",
        description="Runs the AVC -> AVSA curriculum with checkpoints to --train.checkpoint_url and metrics "
        "to --tracking.uri (empty: MLFLOW_TRACKING_URI, else a local sqlite file; off: none). "
        "Without --ray or --hostfile, starts --train.processes ranks on this machine.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "--resume",
        metavar="latest|auto|URL",
        help="continue from the newest checkpoint under --train.checkpoint_url (latest: it must exist; "
        "auto: if any), or from a checkpoint URL",
    )
    launch = parser.add_mutually_exclusive_group()
    launch.add_argument(
        "--ray", action="store_true", help="run as Ray Train workers (inside `ray job submit`)"
    )
    launch.add_argument(
        "--hostfile", metavar="FILE", help="launch on the hosts of FILE with the DeepSpeed launcher"
    )
    parser.add_argument(
        "--launcher-args",
        default="",
        metavar="ARGS",
        help='extra arguments for the deepspeed launcher with --hostfile, e.g. "--no_ssh --node_rank 0"',
    )
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="Ray workers (default 2)")
    parser.add_argument(
        "--min-workers",
        type=int,
        metavar="M",
        help="with --ray: restart on as few as M workers when the cluster shrank (elastic; default: "
        "always --workers); each restart resumes the newest checkpoint on its world size",
    )
    parser.add_argument(
        "--gpus-per-worker", type=float, default=0, metavar="G", help="GPUs per Ray worker (default 0)"
    )
    parser.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="PACK",
        help="where Ray puts the workers: PACK fills a node first (least network traffic), SPREAD "
        "puts them on different nodes where it can, STRICT_SPREAD insists (default PACK)",
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        default=0,
        metavar="F",
        help="Ray restarts after a worker failure (default 0)",
    )
    add_config_arguments(parser, "data", "model", "train", "tracking", "storage")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from cluster import launch

    if args.ray:
        return launch.run_ray(
            cfg,
            args.workers,
            args.gpus_per_worker,
            args.max_failures,
            args.resume,
            args.placement,
            args.min_workers,
        )
    if args.hostfile:
        return launch.run_hostfile(cfg, args.hostfile, args.resume, shlex.split(args.launcher_args))
    return launch.run_local(cfg, args.resume)
