"""`avsa config show`: print the resolved config tree as YAML, credentials masked, optionally documented."""

from __future__ import annotations

import argparse

from cluster.cli import add_config_arguments
from trainer.config import Config, dump_config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="inspect the resolved configuration")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show",
        help="print the resolved config (defaults < --config FILE < overrides) as YAML",
        description="Credentials (storage keys, any token, password or secret) are shown as a marker "
        "saying where they came from, as every saved config holds them; --show-secrets prints them.",
        epilog="examples:\n  avsa config show --train.lr 3e-4 --data.feature logmel_iv\n"
        "  avsa config show --doc > my.yaml   # a documented config file to edit",
    )
    show.add_argument("--show-secrets", action="store_true", help="print credentials in clear text")
    show.add_argument(
        "--doc", action="store_true", help="every section and key with its documentation as a comment"
    )
    add_config_arguments(show)
    show.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    print(dump_config(cfg, show_secrets=args.show_secrets, doc=args.doc), end="")
    return 0
