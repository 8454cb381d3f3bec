"""`avsa train`: pretrain the encoders (local processes, Ray Train, or the DeepSpeed launcher)."""

from __future__ import annotations

import argparse
import shlex

from cluster.cli import add_config_arguments, add_config_flag
from trainer.config import Config

EPILOG = """\
examples:
  avsa train --train.processes 2 --data.url synthetic:// --model.preset tiny
  avsa train --resume latest --train.checkpoint_url s3://avsa/runs/a
  ray job submit -- avsa train --ray --workers 8 --gpus-per-worker 1 --max-failures 3
  ray job submit -- avsa train --ray --workers 8 --min-workers 4 --max-failures 3   # elastic
  avsa train --hostfile hosts.txt          # lines like "node-1 slots=8"; DeepSpeed launcher
"""


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
    # Short spellings of the launch section's keys (saved with the run's config like every other).
    for key, flag, metavar in (
        ("launch.workers", "--workers", "N"),
        ("launch.min_workers", "--min-workers", "M"),
        ("launch.gpus_per_worker", "--gpus-per-worker", "G"),
        ("launch.placement", "--placement", None),
        ("launch.max_failures", "--max-failures", "F"),
    ):
        add_config_flag(parser, key, flag, metavar=metavar)
    add_config_arguments(parser, "data", "model", "train", "launch", "tracking", "storage")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from cluster import launch

    if args.ray:
        return launch.run_ray(cfg, args.resume)
    if args.hostfile:
        return launch.run_hostfile(cfg, args.hostfile, args.resume, shlex.split(args.launcher_args))
    return launch.run_local(cfg, args.resume)
