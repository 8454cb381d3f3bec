"""The `avsa` command line: one subcommand per module in :mod:`cluster.commands`.

Every subcommand takes ``--config FILE`` and any number of dotted overrides
(``--train.lr 3e-4 --data.viewpoints 4``), resolved into one :class:`trainer.config.Config`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from trainer.config import Config, load_config
from trainer.typed_config import ConfigError

# Subcommand modules, in the order `avsa --help` lists them. Each has `register(subparsers)`
# that adds its parser and sets `func=run(args, cfg) -> int`.
COMMANDS = (
    "demo",
    "synth",
    "preprocess",
    "stats",
    "train",
    "export",
    "eval",
    "eval_service",
    "experiment",
    "stack",
    "config",
)

EPILOG = (
    "Every command also accepts --config FILE.yaml and dotted overrides such as "
    "--train.lr 3e-4 or --data.viewpoints=4; see `avsa config show` for every key."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avsa",
        description="Self-supervised audio-visual spatial alignment on 360° video with ambisonic audio.",
        epilog=EPILOG,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        # No command is skipped: one that cannot load stops the CLI with the import error that says why.
        importlib.import_module(f"cluster.commands.{name}").register(sub)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--config FILE`` option every subcommand shares (overrides are collected separately)."""
    parser.add_argument("--config", metavar="FILE", help="YAML config; overrides on the command line win")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    args.overrides = extra  # commands with their own config layers (the demo) resolve again
    try:
        cfg: Config = load_config(getattr(args, "config", None), extra)
    except ConfigError as exc:
        parser.error(str(exc))
    except FileNotFoundError as exc:
        parser.error(f"config file not found: {exc.filename}")
    try:
        return int(args.func(args, cfg) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
