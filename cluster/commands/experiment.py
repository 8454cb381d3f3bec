"""`avsa experiment`: the science experiment end to end (data, every arm × seed, pooled results)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cluster.cli import add_config_arguments
from trainer.config import Config

EPILOG = """\
The plan (default cluster/experiments/science.yaml) names the data to
generate, the worlds, the seeds, the optimizer steps every trained arm gets,
overrides for every arm and each arm's own. A unit (world, arm, seed) is
trained and evaluated once: its report is kept beside it, so an interrupted
experiment continues where it stopped when run again. Results go to the
plan's `results` folder (science.md with a table per world, science.csv,
science.png) and to MLflow (sqlite in the plan's folder).

The science plan takes about 95 minutes on 2 cores; run it in the background
and watch it:
  nohup avsa experiment > experiment.log 2>&1 &
  avsa experiment --status
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "experiment",
        help="the science experiment: AVSA vs AVC vs random init, controls, seeds, intervals",
        description="Generates the experiment's data, trains every arm for the same number of steps "
        "on every seed, evaluates each with the full suite, and writes one table of means with 95 % "
        "intervals over seeds × held-out scenes and the paired differences between arms.",
        epilog=EPILOG,
    )
    parser.add_argument("--plan", metavar="FILE", help="experiment plan (default: the science plan)")
    parser.add_argument("--status", action="store_true", help="print the progress of a running experiment")
    add_config_arguments(parser, "preprocess", "eval", "storage")  # arms: the plan alone
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from cluster import experiment

    plan = experiment.load_plan(args.plan or experiment.PLAN)
    if args.status:
        progress = plan.folder / "progress.json"
        if not progress.exists():
            print(f"no experiment has started in {plan.folder}")
            return 1
        print(json.dumps(json.loads(progress.read_text()), indent=1))
        return 0
    result = experiment.run(plan, cfg)
    print(result["markdown"])
    print(f"results: {Path(plan.results) / plan.name}.md and .csv ({result['seconds'] / 60:.0f} min)")
    return 0
