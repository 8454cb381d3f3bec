"""Typed configuration trees: dataclasses <-> plain dicts, dotted overrides, clear errors, help text.

Generic machinery only; the AVSA tree itself lives in :mod:`trainer.config`.
Supported field types: bool, int, float, str, ``X | None``, ``Literal[...]``,
``tuple[T, ...]``/``tuple[T1, T2]``, ``list[T]``, ``dict[str, T]`` and nested dataclasses.
A field is documented by the string literal under it (an attribute docstring, as in torchtitan's
config): :func:`keys` reads them from the source, so the help text cannot drift from the field.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import functools
import inspect
import itertools
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the dotted key and the fix."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to type ``tp`` or raise :class:`ConfigError` naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arm in (a for a in args if a is not type(None)):
            with contextlib.suppress(ConfigError):  # the union's own message names every arm
                return _coerce(value, arm, key)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}: {value!r}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        val_tp = args[1] if args else Any
        return {str(k): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # YAML reads `0.1` or `42` as numbers; a str field accepts their text.
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {_type_name(tp)}")


def _unknown(key: str, choices: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], choices, n=1)
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f" (did you mean '{section}{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}; known keys here: {', '.join(sorted(choices))}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (partial) mapping; missing keys keep their defaults."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            raise _unknown(prefix + k, names)
        kwargs[k] = _coerce(v, hints[k], prefix + k)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from exc
    return obj


def to_dict(obj: Any) -> Any:
    """Plain (YAML/JSON-safe) form of a config tree; tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """Turn ``["--train.lr", "3e-4", "--data.viewpoints=4"]`` into ``{"train.lr": 3e-4, ...}``.

    Values are parsed as YAML scalars/flow lists, so ``[512,256]``, ``true`` and ``null`` work.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(f"expected an override like --section.key VALUE, got {arg!r}")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"override {arg} has no value; write {arg} VALUE")
            key, raw = arg[2:], argv[i + 1]
            i += 2
        out[key] = parse_value(raw)
    return out


def parse_value(raw: str) -> Any:
    """A command-line value as YAML reads it (``3e-4`` a number, ``[1,2]`` a list), ``""`` kept as is."""
    if raw == "":  # YAML reads nothing as null; on a command line `--tracking.uri ""` means the empty string
        return raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    # YAML 1.1 reads "3e-4" as a string; numbers written that way are common on command lines.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(cfg: T, overrides: Mapping[str, Any]) -> T:
    """Return a copy of ``cfg`` with dotted-key overrides applied and validated."""
    data = to_dict(cfg)
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        walked: list[str] = []
        for part in parts[:-1]:
            walked.append(part)
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                raise _unknown(".".join(walked), list(node) if isinstance(node, dict) else [])
            node = node[part]
        if parts[-1] not in node:
            raise _unknown(dotted, list(node))
        node[parts[-1]] = value
    return from_dict(type(cfg), data)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted-key view of a config tree or mapping (``{"train.lr": 1e-4, ...}``), e.g. for MLflow."""
    out: dict[str, Any] = {}
    for key, value in (to_dict(cfg) if not isinstance(cfg, Mapping) else cfg).items():
        if isinstance(value, Mapping):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


@dataclasses.dataclass(frozen=True)
class Key:
    """One leaf of a config tree, as the command line and `avsa config show --doc` describe it."""

    name: str  # dotted, e.g. "data.feature"
    type: Any
    default: Any
    doc: str

    @property
    def choices(self) -> tuple[Any, ...]:
        """The allowed values of a ``Literal`` field; empty for any other type."""
        return typing.get_args(self.type) if typing.get_origin(self.type) is typing.Literal else ()

    def type_text(self) -> str:
        """The type as a user reads it: ``{a,b}`` for literals, ``str | None``, ``tuple[int, int]``."""
        if self.choices:
            return "{" + ",".join(map(str, self.choices)) + "}"
        return _type_name(self.type).replace("NoneType", "None")

    def default_text(self) -> str:
        """The default as it is written in YAML or on the command line."""
        return flow_yaml(self.default)


def flow_yaml(value: Any) -> str:
    """``value`` as one line of YAML: ``[512, 256]``, ``null``, ``''``, ``0.001``."""
    return yaml.safe_dump(to_dict(value), default_flow_style=True).removesuffix("\n...\n").strip()


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass ``cls`` (``""`` for an undocumented field)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


def keys(obj: Any, prefix: str = "") -> list[Key]:
    """Every leaf of config tree ``obj`` (an instance: its values are the defaults shown), in field order."""
    hints, docs = _hints(type(obj)), field_docs(type(obj))
    out: list[Key] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += keys(value, f"{prefix}{f.name}.")
        else:
            out.append(Key(prefix + f.name, hints[f.name], value, docs[f.name]))
    return out


def describe(key: Key, width: int = 100, indent: str = "  ") -> str:
    """Help lines of one key: ``--name TYPE = DEFAULT`` and its docstring wrapped below it."""
    head = f"{indent}--{key.name} {key.type_text()} = {key.default_text()}"
    doc = textwrap.fill(key.doc, width, initial_indent=indent * 3, subsequent_indent=indent * 3)
    return f"{head}\n{doc}" if key.doc else head


def documented_yaml(cls: type, data: Mapping[str, Any], width: int = 100) -> str:
    """``data`` (the plain form of a tree of dataclass ``cls``, see :func:`to_dict`) as YAML, with each
    section's and field's docstring, and a literal's allowed values, as comments above it."""
    lines: list[str] = []

    def comment(text: str, indent: str) -> None:
        lines.extend(f"{indent}# {line}" for line in textwrap.wrap(text, width - len(indent) - 2))

    def walk(node: type, values: Mapping[str, Any], indent: str) -> None:
        hints, docs = _hints(node), field_docs(node)
        for f in dataclasses.fields(node):  # type: ignore[arg-type]
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                lines.append("")
                comment(" ".join((tp.__doc__ or "").split()), indent)
                lines.append(f"{indent}{f.name}:")
                walk(tp, values[f.name], indent + "  ")
                continue
            key = Key(f.name, tp, values[f.name], docs[f.name])
            one_of = f" One of: {', '.join(map(str, key.choices))}." if key.choices else ""
            comment(key.doc + one_of, indent)
            lines.append(f"{indent}{f.name}: {key.default_text()}")

    walk(cls, data, "")
    return "\n".join(lines).lstrip("\n") + "\n"
