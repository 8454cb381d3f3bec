"""`avsa eval-service`: the long-running evaluation service, and its queue (`--status`)."""

from __future__ import annotations

import argparse

from cluster.cli import add_config_flag
from cluster.commands.eval import add_suite_arguments, tracking_uri, trusted_roots
from trainer.config import Config

EPILOG = """\
examples:
  avsa eval-service --tracking-uri http://127.0.0.1:5000 --poll 30 --doa s3://avsa/eval/doa
  avsa eval-service --status --tracking-uri http://127.0.0.1:5000
  ray job submit -- avsa eval-service --tracking-uri http://mlflow:5000
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval-service",
        help="evaluate every new checkpoint of every tracked run, once; or show the queue",
        description="Polls MLflow for runs with checkpoints, evaluates each checkpoint exactly once "
        "(interrupted evaluations are redone, finished ones never), and logs the results into the "
        "training run at the checkpoint's step plus a linked evaluation run with the details and plots. "
        "--status prints every checkpoint's state: queued, running, stale (interrupted), done, failed. "
        "Only checkpoints under eval.trusted_roots (default: train.checkpoint_url) are evaluated; any "
        "other gets a failure record naming its URL.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "--status", action="store_true", help="print every checkpoint's evaluation state and exit"
    )
    add_config_flag(parser, "eval.tracking_uri", "--tracking-uri", metavar="URI")
    add_config_flag(parser, "eval.poll_seconds", "--poll", metavar="SECONDS")
    add_config_flag(parser, "eval.lease_s", "--lease", metavar="SECONDS")
    add_config_flag(parser, "eval.experiments", "--experiment", append=True, metavar="NAME")
    parser.add_argument("--once", action="store_true", help="one sweep, then exit")
    add_suite_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from evaluation.service import EvalService, format_status, status

    uri = tracking_uri(cfg)
    if not uri:
        raise SystemExit("no tracking server: pass --tracking-uri or set tracking.uri")
    if args.status:
        print(format_status(status(uri, cfg.storage, cfg.eval.experiments)))
        return 0
    service = EvalService(uri, cfg.eval, cfg.storage, trusted_roots=trusted_roots(cfg))
    if args.once:
        finals = service.run_once()
        return 1 if any(m.state == "failed" for m in finals) else 0
    service.serve(cfg.eval.poll_seconds)
    return 0
