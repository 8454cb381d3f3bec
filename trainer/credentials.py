"""Credentials in the config tree: which keys they are, and how they stay out of what the product writes.

:func:`is_secret` is the one rule. Everything that writes a config somewhere others can read it (the
``config.yaml`` of every checkpoint, :func:`trainer.config.save_config`, ``avsa config show``, MLflow
params, the command lines and serialized configs launchers hand to other processes) goes through this
module, so a secret given by flag, config file or environment is never persisted.

A saved config holds a *marker* in place of each secret, saying where the run took the value from;
loading a saved config turns markers back into "unset", so the reader takes the value from its own
flags, config file or environment (a resumed run, an export, the evaluation service).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dataloading.storage import CREDENTIAL_ENV
from trainer.typed_config import flatten, to_dict

# A key is a credential when a word of its last part is one of these (``access_key_id``,
# ``secret_access_key``, ``auth_token``, ``password``, ...). Deliberately broad: a key masked by
# mistake costs a line of output; a credential written into a shared checkpoint cannot be taken back.
SECRET_WORDS = frozenset({"key", "secret", "password", "passwd", "token", "credential", "credentials"})

# The environment variable each credential of the config falls back to when unset (what a launcher
# uses to hand it to another process without a command line or a serialized config).
ENVIRONMENT = {f"storage.{field}": env for field, env in CREDENTIAL_ENV.items()}

MARKER_PREFIX = "<secret not saved: "
FROM_CONFIG = f"{MARKER_PREFIX}from the command line or a config file>"


def is_secret(key: str) -> bool:
    """True if the dotted config key ``key`` (e.g. ``storage.secret_access_key``) holds a credential."""
    return bool(SECRET_WORDS & set(key.rsplit(".", 1)[-1].lower().split("_")))


def is_marker(value: Any) -> bool:
    """True for the text a saved config holds in place of a secret."""
    return isinstance(value, str) and value.startswith(MARKER_PREFIX) and value.endswith(">")


def marker(key: str, value: Any, environ: Mapping[str, str] | None = None) -> str | None:
    """What a saved config holds in place of secret ``key`` whose value in the run is ``value``: where
    the run took it from. None when the run has no such credential (nothing to hide or to say)."""
    environ = os.environ if environ is None else environ
    env = ENVIRONMENT.get(key)
    from_env = f"{MARKER_PREFIX}from the environment (${env})>"
    if value is None:
        return from_env if env and environ.get(env) else None
    return from_env if env and environ.get(env) == value else FROM_CONFIG


def redacted(cfg: Any, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The plain-dict form of config tree ``cfg`` (see :func:`trainer.typed_config.to_dict`) with every
    secret replaced by its :func:`marker`."""
    return _map_secrets(to_dict(cfg), lambda key, value: marker(key, value, environ))


def without_secrets(cfg: Any) -> dict[str, Any]:
    """The plain-dict form of ``cfg`` with every secret unset (None): what a launcher may serialize
    for another process, which then reads the credentials from its environment."""
    return _map_secrets(to_dict(cfg), lambda key, value: None)


def without_markers(data: Mapping[str, Any]) -> dict[str, Any]:
    """A (nested) config mapping with every secret's marker unset: a saved config loads back without
    credentials, so its reader falls back to its own."""
    return _map_secrets(data, lambda key, value: None if is_marker(value) else value)


def _map_secrets(node: Mapping[str, Any], replace: Any, prefix: str = "") -> dict[str, Any]:
    """``node`` with each secret leaf's value replaced by ``replace(dotted key, value)``."""
    out = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out[key] = _map_secrets(value, replace, f"{dotted}.")
        else:
            out[key] = replace(dotted, value) if is_secret(dotted) else value
    return out


def secret_env(cfg: Any) -> dict[str, str]:
    """Environment variables that carry the secrets set in ``cfg`` to another process (launchers pass
    these instead of arguments, which ``ps`` and the Ray dashboard show)."""
    env = {}
    for key, value in flatten(cfg).items():
        if is_secret(key) and value is not None:
            if key not in ENVIRONMENT:
                raise ValueError(
                    f"{key} is a credential with no environment variable to carry it to other processes; "
                    "add it to trainer.credentials.ENVIRONMENT"
                )
            env[ENVIRONMENT[key]] = str(value)
    return env
