"""`avsa tracking replay FILE`: deliver what a run could not send to its tracking server."""

from __future__ import annotations

import argparse
from pathlib import Path

from cluster.cli import add_config_arguments
from trainer.config import Config

EPILOG = """\
A run whose tracking server was still unreachable when it ended leaves its last metrics, tags, sample
figures and end status in a backlog file and names it in its last warning, e.g.
  .avsa/tracking-backlog/<run id>/backlog.jsonl
Replaying delivers them to the same run, in order, on the server the run used (or --tracking.uri);
what cannot be delivered within --tracking.flush_timeout_s stays in the file for another replay.

examples:
  avsa tracking replay .avsa/tracking-backlog/3f2a…/backlog.jsonl
  avsa tracking replay backlog.jsonl --tracking.uri http://mlflow.internal:5000   # the server moved
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tracking",
        help="deliver a run's tracking backlog (left when the server was down at its end)",
        description="Tools for the MLflow records a training run keeps while its server is unreachable.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    replay = actions.add_parser(
        "replay",
        help="deliver a backlog file to its run, in order",
        description="Sends every record of FILE to the run it belongs to, retrying while the server is "
        "unreachable, and removes the file once it is empty.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("file", metavar="FILE", type=Path, help="the backlog file a run named")
    add_config_arguments(replay, "tracking")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from trainer.outbox import replay

    if not args.file.is_file():
        raise SystemExit(
            f"avsa tracking replay: {args.file} is not a file; give the path the run's warning named"
        )
    # tracking.uri as given, not resolved: empty means the server the run itself used.
    delivered, left = replay(args.file, cfg.tracking.uri, cfg.tracking.flush_timeout_s)
    if left:
        print(f"delivered {delivered} records; {left} are left in {args.file}: replay it again later")
        return 1
    print(f"delivered {delivered} records; removed {args.file}")
    return 0
