"""The one AVSA config tree: every section, its defaults, loading, overrides and saving.

Defaults match the papers (shared/REFERENCE.md); the demo shrinks them by overrides.
Load with :func:`load_config`, which applies a YAML file and then ``--section.key VALUE``
overrides, validating types and names with errors that name the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dataloading.config import DataConfig, PreprocessConfig, StorageConfig, SynthConfig
from trainer.credentials import redacted, without_markers
from trainer.typed_config import (
    ConfigError,
    apply_overrides,
    documented_yaml,
    flatten,
    from_dict,
    parse_overrides,
    to_dict,
)

HeadKind = Literal["linear", "bn_linear", "mlp"]
AvcForm = Literal["trunks", "context"]
TRACKING_OFF = "off"  # the tracking.uri that turns tracking off
LOCAL_TRACKING = "sqlite:///.avsa/mlflow.db"  # where runs go when nothing names a store


@dataclass
class StackConfig:
    """The local stack of real services (SeaweedFS S3, MLflow, Ray head), all bound to ``host``."""

    host: str = "127.0.0.1"
    """Address every service binds to; loopback keeps them off the network."""
    hosts: int = 1
    """Virtual hosts (network namespaces, needs root): services and the Ray head on the first, a Ray
    worker node on each other. 1: one plain host."""
    state_dir: str = ".avsa/stack"
    """Folder of the stack's state.json, logs, data and credentials (readable by you only)."""
    s3_port: int = 8333
    """Port of the S3 API."""
    weed_master_port: int = 9333
    """Port of the SeaweedFS master."""
    weed_volume_port: int = 8089
    """Port of the SeaweedFS volume server."""
    weed_filer_port: int = 8888
    """Port of the SeaweedFS filer."""
    bucket: str = "avsa"
    """Bucket created on first start; the demo writes under s3://BUCKET/demo."""
    mlflow_port: int = 5000
    """Port of the MLflow tracking server and UI."""
    ray_port: int = 6379
    """Port of the Ray head (GCS)."""
    ray_dashboard_port: int = 8265
    """Port of the Ray dashboard, where `ray job submit` sends jobs."""
    ray_agent_port: int = 52365
    """Port of the head's dashboard agent, which runs submitted jobs."""
    ray_num_cpus: int = 0
    """CPUs the Ray head offers; 0: all cores."""
    start_timeout_s: float = 120.0
    """Seconds to wait for each service to become healthy."""
    auth: Literal["token", "none"] = "token"
    """Ray token authentication: on a shared machine anyone could otherwise submit jobs (run code as
    you) to the head's loopback ports. Clients get the token file from `avsa stack env`."""
    mlflow_auth: Literal["none", "basic"] = "none"
    """basic: MLflow's basic-auth app with a generated login (in `avsa stack env`)."""


@dataclass
class ModelConfig:
    """Encoders and heads (R(2+1)D-18 video, 9-layer 2D-CNN audio, context transformers)."""

    preset: Literal["paper", "tiny"] = "paper"
    """Encoder sizes: the papers' networks, or small ones that train in minutes on a CPU."""
    embed_dim: int = 128
    """Width of the embeddings the contrastive losses compare."""
    context_layers: int = 2
    """Transformer layers of each context network (over the K viewpoints)."""
    context_heads: int = 8
    """Attention heads of the context transformers, as in the reference code."""
    context_dropout: float = 0.1
    """Dropout probability inside the context transformers."""
    direction_encoding: bool = False
    """Add each viewpoint's direction to its tokens (a shortcut unless backgrounds are randomised)."""
    head: HeadKind = "linear"
    """Projection heads: linear (the papers'), bn_linear (non-affine BatchNorm, then Linear) or mlp
    (Linear-BN-ReLU-Linear). The last two remove the component all max-pooled ReLU features share."""


@dataclass
class TrainConfig:
    """Optimisation, curriculum, checkpoints and launch."""

    lr: float = 1e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 1e-5
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Optimizer steps of linear learning-rate warm-up at the start of each stage (AVC, then AVSA:
    the AVSA stage's context transformers start with empty Adam moments)."""
    tau: float = 0.07
    """Temperature of the contrastive (InfoNCE) losses."""
    avc_form: AvcForm = "trunks"
    """What the AVC stage contrasts. trunks: each viewpoint's audio embedding against its video embedding
    (trunks and heads, no context), the other clips' same viewpoint the negatives: K problems like the
    reference's one crop per clip. context: the context predictions of clip embeddings max-pooled over
    viewpoints (the first design, kept as an ablation: it stays at chance, docs/results/learnability.md)."""
    avc_epochs: int = 50
    """Epochs of the audio-visual correspondence stage (first)."""
    avsa_epochs: int = 50
    """Epochs of the audio-visual spatial alignment stage (second)."""
    steps_per_epoch: int = 0
    """Optimizer steps per epoch; 0: one pass over the data."""
    zero_stage: Literal[0, 1, 2, 3] = 1
    """DeepSpeed ZeRO stage (0-3): how optimizer state, gradients and weights are partitioned."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 on GPU, fp32 on CPU."""
    plateau_warn_steps: int = 200
    """Steps a stage's loss may sit within 1 % of chance (ln of its candidate count) before the run says
    so, once per stage, with the figures that tell why (collapse, vanishing gradients, or neither)."""
    grad_clip: float = 1.0
    """Gradient norm clipping threshold."""
    checkpoint_url: str = ".avsa/checkpoints"
    """Folder (local or s3://) of the run's checkpoints, one subfolder per saved step."""
    checkpoint_every: int = 1000
    """Optimizer steps between checkpoints (each stage's end is always saved)."""
    keep_checkpoints: int = 0
    """Newest checkpoints kept (0: all); stage ends and those not evaluated yet are kept as well."""
    preempt_grace_s: float = 25.0
    """Seconds after a SIGTERM to save a checkpoint and exit; below Kubernetes' 30-s default grace."""
    processes: int = 1
    """Ranks `avsa train` starts on this machine (without --ray or --hostfile)."""
    seed: int = 0
    """Seed of the weights' initialisation and of every random draw of training."""


@dataclass
class TrackingConfig:
    """MLflow. Without a URI, runs go where MLflow's own clients would: MLFLOW_TRACKING_URI (which
    `eval $(avsa stack env)` sets to the stack's server), else a local sqlite store."""

    uri: str = ""
    """MLflow tracking URI (http://, sqlite:///, a folder); empty: MLFLOW_TRACKING_URI when it is set,
    else sqlite:///.avsa/mlflow.db; off: no tracking."""
    experiment: str = "avsa"
    """MLflow experiment the runs go to."""
    log_every: int = 10
    """Steps between logged metrics (their mean over the steps and ranks since the last, one
    all-reduce) and console lines."""
    samples_every: int = 500
    """Steps between sample figures (also the first step of a run); 0: the first step only."""
    flush_timeout_s: float = 60.0
    """Seconds the end of a run waits for an unreachable server to take what is queued (and the start
    of a run waits to open it, and `avsa tracking replay` to deliver); the rest goes to a backlog file."""
    backlog_dir: str = ".avsa/tracking-backlog"
    """Local folder for what rank 0 could not send yet: a spill file past ``backlog_memory`` records,
    the sample figures not yet sent and, after an outage that outlasted the run, its backlog file."""
    backlog_memory: int = 10000
    """Records (a metrics row, a tag, a figure) kept in memory while the server is unreachable; later
    ones are appended to a spill file until the server takes the backlog."""

    def resolved(self) -> tuple[str, str]:
        """The store runs go to ("" when tracking is off) and, in words, why that one."""
        if self.uri == TRACKING_OFF:
            return "", "tracking.uri is off"
        if self.uri:
            return self.uri, "tracking.uri"
        if env := os.environ.get("MLFLOW_TRACKING_URI"):
            return env, "MLFLOW_TRACKING_URI, as tracking.uri is empty"
        return LOCAL_TRACKING, "neither tracking.uri nor MLFLOW_TRACKING_URI is set"


@dataclass
class EvalConfig:
    """The benchmark suite (what to evaluate on and how) and the evaluation service. An empty URL skips
    the tasks that need it."""

    clips_url: str = ""
    """Held-out clips (shards of scenes no training run saw) for AVC-Bin, AVSA-Bin and the pretext
    metrics. Empty: the run's own data.url if it is synthetic:// (fresh clips), else those tasks are
    skipped, as a shard dataset's own clips are training data."""
    clips: int = 0
    """Held-out clips to use; 0: every clip, each once (more than exist is an error)."""
    classification_url: str = ""
    """Sound-classification set (`avsa synth --eval-sets` writes one)."""
    doa_url: str = ""
    """Direction-of-arrival set (`avsa synth --eval-sets` writes one)."""
    seld_url: str = ""
    """A STARSS23-format tree (foa_dev/ + metadata_dev/): SELD with the DCASE 2023 metrics, heads
    trained on dev-train and scored on dev-test."""
    probe_epochs: int = 100
    """Passes over the training split of every probe and head (classification, DOA, AVC/AVSA-Bin)."""
    seld_epochs: int = 20
    """Passes over SELD dev-train of every SELD head and of the CRNN baseline."""
    hidden: int = 128
    """Units of the MLP heads (AVC-Bin, AVSA-Bin, DOA); the probes are linear."""
    steer_directions: int = 60
    """Directions of the steered DOA task's grid, elevation within ±50°."""
    steer_train_clips: int = 100
    """Head-training clips of the steered DOA scorer (each gives a grid of examples)."""
    pretext_batch: int = 8
    """Clips per batch of the held-out pretext accuracies (chance: 1 / this)."""
    resamples: int = 1000
    """Bootstrap resamples of every 95 % interval."""
    seed: int = 0
    """Seed of the heads' initialisation, their batches and the bootstrap."""
    device: str = "auto"
    """cuda, cpu, or auto (CUDA when present)."""
    tracking_uri: str = ""
    """MLflow the service watches and logs to; empty: the runs' store (see tracking.uri)."""
    experiments: tuple[str, ...] = ()
    """MLflow experiments the service watches; empty: every experiment."""
    poll_seconds: float = 60.0
    """Seconds between the service's sweeps for new checkpoints."""
    lease_s: float = 120.0
    """Seconds a claimed checkpoint stays claimed without a renewal (renewed while evaluating)."""
    trusted_roots: tuple[str, ...] = ()
    """Checkpoint URL prefixes the service evaluates (anyone who can write an MLflow tag can name any
    URL); empty: train.checkpoint_url."""


Placement = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]  # Ray placement group strategies


@dataclass
class LaunchConfig:
    """Where the ranks of `avsa train --ray` run: Ray Train workers, one rank each."""

    workers: int = 2
    """Ray Train workers (ranks)."""
    min_workers: int = 0
    """Restart on as few as this many workers when the cluster shrank (elastic); each restart resumes
    the newest checkpoint on its world size. 0: every restart waits for all launch.workers."""
    gpus_per_worker: float = 0.0
    """GPUs per Ray worker (0: CPU ranks with gloo; otherwise NCCL)."""
    placement: Placement = "PACK"
    """Where Ray puts the workers: PACK fills a node first (least network traffic), SPREAD puts them on
    different nodes where it can, STRICT_* insist."""
    max_failures: int = 0
    """Restarts of the worker group after a worker or node failure."""


@dataclass
class Config:
    """Root of the tree; ``Config()`` is the paper configuration."""

    storage: StorageConfig = field(default_factory=StorageConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
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


def dump_config(cfg: Config, show_secrets: bool = False, doc: bool = False) -> str:
    """The resolved config as YAML text, each credential replaced by a marker saying where it came
    from (:func:`trainer.credentials.redacted`) unless ``show_secrets``; with ``doc``, every section
    and key has its docstring as a comment above it."""
    data = to_dict(cfg) if show_secrets else redacted(cfg)
    return documented_yaml(Config, data) if doc else yaml.safe_dump(data, sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, without credentials (loadable again with :func:`load_config`)."""
    Path(path).write_text(dump_config(cfg))
