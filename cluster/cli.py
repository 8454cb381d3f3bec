"""The `avsa` command line: one subcommand per module in :mod:`cluster.commands`.

Every subcommand takes ``--config FILE`` and any number of dotted overrides
(``--train.lr 3e-4 --data.viewpoints 4``), resolved into one :class:`trainer.config.Config`.
Settings live only in that tree: a command's short flags (``--input``) are aliases of its keys
(:func:`add_config_flag`), and its ``--help`` lists the keys of the sections it reads, generated
from the fields' docstrings (:func:`add_config_arguments`).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import re
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from trainer.config import Config, load_config
from trainer.typed_config import (
    ConfigError,
    Key,
    describe,
    flatten,
    flow_yaml,
    keys,
    parse_overrides,
    parse_value,
)

ALIAS = "config:"  # argparse dest prefix of a short flag that sets a config key

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
    "probe",
    "eval_service",
    "tracking",
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps each over-long line of a description or epilog to the terminal and keeps every other line
    as written, so prose flows while examples and key listings keep their layout."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines = []
        for line in text.splitlines():
            fits = len(line) + len(indent) <= width or line[:1].isspace()
            lines.append(indent + line if fits else textwrap.fill(line, width, initial_indent=indent))
        return "\n".join(lines)


def add_config_arguments(parser: argparse.ArgumentParser, *sections: str) -> None:
    """The ``--config FILE`` option every subcommand shares, and the help listing of the config
    ``sections`` the command reads: key, type (allowed values of a literal), default and docstring.

    Dotted overrides themselves are collected by :func:`main`, not by argparse.
    """
    parser.add_argument("--config", metavar="FILE", help="YAML config; overrides on the command line win")
    parser.formatter_class = HelpFormatter
    if not sections:
        return
    listed = [k for section in sections for k in config_keys().values() if k.name.split(".", 1)[0] == section]
    text = "\n".join(describe(k) for k in listed)
    head = (
        f"config keys ({', '.join(sections)}): --KEY VALUE or --KEY=VALUE, lists as [a,b], an empty "
        'string as "";\nevery key: avsa config show --doc'
    )
    parser.epilog = "\n\n".join(part for part in (parser.epilog, f"{head}\n{text}") if part)


@functools.cache
def config_keys() -> dict[str, Key]:
    """Every leaf of the config tree by dotted name, read once: each parser's flags and listing use it."""
    return {k.name: k for k in keys(Config())}


_UNSET = object()


def add_config_flag(
    parser: argparse.ArgumentParser,
    name: str,
    flag: str,
    *,
    value: Callable[[str], Any] | None = None,
    const: Any = _UNSET,
    append: bool = False,
    metavar: str | None = None,
    says: str | None = None,
) -> None:
    """A short flag (``--input``) that sets config key ``name`` (``preprocess.input``). Its help is the
    key's docstring, allowed values and default, so the two cannot disagree.

    The flag takes one value, read by ``value`` (default: as a dotted override reads it; a string key
    keeps the text as typed); with ``const`` it takes none and sets the key to ``const``; with
    ``append`` it may repeat, each value one item of the key's list. ``says`` is the help of a flag
    that sets the key to the opposite of what its docstring describes (``--no-fetch``).
    """
    key = config_keys()[name]
    options: dict[str, Any] = {"dest": ALIAS + name, "default": argparse.SUPPRESS}
    if const is not _UNSET:
        options |= {"action": "store_const", "const": const}
        help_text = f"{says or key.doc} (sets --{name} {flow_yaml(const)})"
    else:
        if metavar or not key.choices:  # a literal without one shows its choices
            options["metavar"] = metavar or name.rsplit(".", 1)[-1].upper()
        if append:
            options["action"] = "append"
        elif key.choices:
            options["choices"] = key.choices
        options["type"] = value or (str if key.type is str or append else parse_value)
        help_text = f"{key.doc} (--{name}; default {key.default_text()})"
    parser.add_argument(flag, help=help_text.replace("%", "%%"), **options)


def parse_size(text: str) -> list[int]:
    """``WIDTHxHEIGHT`` (pixels, e.g. ``1024x512``) as [width, height]; the config checks it is 2:1."""
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 1024x512; got {text!r}")
    return [int(match[1]), int(match[2])]


def refuse_contradictions(
    parser: argparse.ArgumentParser, argv: list[str], aliased: dict[str, Any], dotted: dict[str, Any]
) -> None:
    """Raise :class:`ConfigError` when a short flag and its dotted key are both given with different
    values (``--input A --preprocess.input B``), naming both spellings: neither may silently win."""
    given = {token.split("=", 1)[0] for token in argv}
    for key in sorted(aliased.keys() & dotted.keys()):
        short, long = (flatten(load_config(None, {key: v}))[key] for v in (aliased[key], dotted[key]))
        if short != long:
            flag = next((f for f in _option_strings(parser, ALIAS + key) if f in given), "its short flag")
            raise ConfigError(
                f"{flag} {flow_yaml(short)} and --{key} {flow_yaml(long)} set the same key to different "
                "values; give one of them"
            )


def _option_strings(parser: argparse.ArgumentParser, dest: str) -> list[str]:
    """Every option string of an action with ``dest``, in ``parser`` and its subcommands."""
    found = []
    for action in parser._actions:
        if action.dest == dest:
            found += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _option_strings(sub, dest)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        aliased = {k.removeprefix(ALIAS): v for k, v in vars(args).items() if k.startswith(ALIAS)}
        dotted = parse_overrides(extra)
        refuse_contradictions(parser, list(sys.argv[1:] if argv is None else argv), aliased, dotted)
        # kept on args: commands with their own config layers (the demo) resolve them again
        args.overrides = aliased | dotted
        cfg: Config = load_config(getattr(args, "config", None), args.overrides)
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
