"""The one AVSA config tree: every section, its defaults, loading, overrides and saving.

Defaults match the papers (shared/REFERENCE.md); the demo shrinks them by overrides.
Load with :func:`load_config`, which applies a YAML file and then ``--section.key VALUE``
overrides, validating types and names with errors that name the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dataloading.config import DataConfig, PreprocessConfig, StorageConfig
from trainer.credentials import redacted, without_markers
from trainer.typed_config import ConfigError, apply_overrides, flatten, from_dict, parse_overrides, to_dict


@dataclass
class StackConfig:
    """The local stack of real services, all bound to ``host``."""

    host: str = "127.0.0.1"
    hosts: int = 1  # >1: that many virtual hosts (network namespaces); services on the first
    state_dir: str = ".avsa/stack"
    s3_port: int = 8333
    weed_master_port: int = 9333
    weed_volume_port: int = 8089
    weed_filer_port: int = 8888
    bucket: str = "avsa"
    mlflow_port: int = 5000
    ray_port: int = 6379
    ray_dashboard_port: int = 8265
    ray_agent_port: int = 52365  # the head's dashboard agent, which runs submitted jobs
    ray_num_cpus: int = 0  # 0 = all cores
    start_timeout_s: float = 120.0
    # Ray token auth: on a shared machine anyone could otherwise submit jobs (run code as you) to
    # the head's loopback ports. Clients get the token file from `avsa stack env`.
    auth: Literal["token", "none"] = "token"
    mlflow_auth: Literal["none", "basic"] = "none"  # basic: MLflow's basic-auth app, generated login


@dataclass
class ModelConfig:
    """Encoders and heads (R(2+1)D-18 video, 9-layer 2D-CNN audio, context transformers)."""

    preset: Literal["paper", "tiny"] = "paper"
    embed_dim: int = 128
    context_layers: int = 2
    context_heads: int = 8  # as in the reference code
    context_dropout: float = 0.1
    direction_encoding: bool = False


@dataclass
class TrainConfig:
    """Optimisation, curriculum, checkpoints and launch."""

    lr: float = 1e-4
    weight_decay: float = 1e-5
    warmup_steps: int = 0
    tau: float = 0.07
    avc_epochs: int = 50
    avsa_epochs: int = 50
    steps_per_epoch: int = 0  # 0 = one pass over the data
    zero_stage: int = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 on GPU, fp32 on CPU
    grad_clip: float = 1.0
    checkpoint_url: str = ".avsa/checkpoints"
    checkpoint_every: int = 1000  # steps
    # Newest checkpoints kept (0 = all); stage ends and those not evaluated yet are kept as well.
    keep_checkpoints: int = 0
    preempt_grace_s: float = 25.0  # after a SIGTERM; below Kubernetes' default 30 s termination grace
    processes: int = 1  # ranks on this machine for `avsa train`
    seed: int = 0


@dataclass
class TrackingConfig:
    """MLflow. The embedded default is a local sqlite store; the stack serves it over HTTP."""

    uri: str = "sqlite:///.avsa/mlflow.db"
    experiment: str = "avsa"
    # Steps between logged metrics (their mean over the steps and ranks since the last, one all-reduce)
    # and console lines.
    log_every: int = 10
    samples_every: int = 500  # steps between sample figures (also the first step of a run); 0: first only


@dataclass
class EvalConfig:
    """The evaluation service."""

    tracking_uri: str = ""  # empty = tracking.uri
    poll_seconds: float = 60.0
    probe_epochs: int = 100
    seld_epochs: int = 20  # passes over SELD dev-train of every SELD head and of the CRNN baseline
    # Checkpoint URL prefixes the service evaluates (anyone who can write an MLflow tag can name any
    # URL); empty = train.checkpoint_url.
    trusted_roots: tuple[str, ...] = ()


@dataclass
class Config:
    """Root of the tree; ``Config()`` is the paper configuration."""

    storage: StorageConfig = field(default_factory=StorageConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_config(
    path: str | Path | Sequence[str | Path] | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> Config:
    """Defaults, then the YAML file(s) at ``path`` in order (later files win), then overrides.

    ``overrides`` is either argv-style (``["--train.lr", "3e-4"]``) or a dotted-key mapping.
    Raises :class:`ConfigError` naming the offending key and file. A file saved by
    :func:`save_config` holds markers in place of credentials; they load as unset (see
    :mod:`trainer.credentials`).
    """
    cfg = Config()
    paths = [path] if isinstance(path, str | Path) else list(path or [])
    for file in paths:
        text = Path(file).read_text()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ConfigError(f"{file}: expected a mapping of sections at the top level")
        data = without_markers(data)
        try:
            from_dict(Config, data)  # names the bad key without the layering's dotted noise
            cfg = apply_overrides(cfg, flatten(data))
        except ConfigError as exc:
            raise ConfigError(f"{file}: {exc}") from exc
    if not isinstance(overrides, Mapping):
        overrides = parse_overrides(list(overrides))
    return apply_overrides(cfg, overrides) if overrides else cfg


def dump_config(cfg: Config, show_secrets: bool = False) -> str:
    """The resolved config as YAML text, each credential replaced by a marker saying where it came
    from (:func:`trainer.credentials.redacted`) unless ``show_secrets``."""
    return yaml.safe_dump(to_dict(cfg) if show_secrets else redacted(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, without credentials (loadable again with :func:`load_config`)."""
    Path(path).write_text(dump_config(cfg))
