"""`avsa config show`: print the resolved config tree as YAML."""

from __future__ import annotations

import argparse

from cluster.cli import add_config_arguments
from trainer.config import Config
from trainer.typed_config import dump_yaml


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="inspect the resolved configuration")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="print the resolved config (defaults < --config FILE < overrides) as YAML",
        epilog="example: avsa config show --train.lr 3e-4 --data.feature logmel_iv",
    )
    add_config_arguments(show)
    show.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    print(dump_yaml(cfg), end="")
    return 0
