"""`avsa demo`: run the whole system end to end on embedded defaults."""

from __future__ import annotations

import argparse

from cluster.cli import add_config_arguments
from cluster.demo import demo_config, run_demo
from trainer.config import Config

# Every stage reads its section; the demo's own sizes (cluster/demo.yaml) sit under --config.
DEMO_SECTIONS = ("synth", "preprocess", "data", "model", "train", "tracking", "eval", "stack")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the pipeline end to end on this machine (local stack, CPU)",
        description="Starts the local stack (or reuses a healthy one from --stack.state_dir), then runs "
        "synth -> preprocess (a Ray job) -> train (DeepSpeed, 2 ranks) -> export -> evaluation against it, "
        "prints where the MLflow and Ray dashboards are, and stops what it started. Sizes come from "
        "cluster/demo.yaml, layered under --config and overrides.",
    )
    parser.add_argument(
        "--keep-stack", action="store_true", help="leave the stack running to browse the dashboards"
    )
    add_config_arguments(parser, *DEMO_SECTIONS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    run_demo(demo_config(args.config, args.overrides), keep_stack=args.keep_stack)
    return 0
