"""Export trained encoders for fine-tuning: fp32 safetensors + a config, loadable without DeepSpeed.

Output folder (any storage URL)::

    audio_encoder.safetensors   AudioEncoder weights and BN buffers (fp32)
    video_encoder.safetensors   VideoEncoder weights and BN buffers (fp32)
    feature_stats.json          the audio features' normalisation statistics (if the run had them)
    config.json                 what rebuilds them: trunk sizes, audio feature settings, provenance

:func:`export` consolidates the ZeRO partitions of a checkpoint (``deepspeed.utils.zero_to_fp32``)
and registers the folder as an MLflow model version. Reading an export is :mod:`trainer.embedder`'s
job, with torch and safetensors alone: DeepSpeed is imported inside :func:`consolidated_state_dict`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from dataclasses import asdict
from typing import Any

import torch
from safetensors.torch import save_file

from dataloading.config import StorageConfig
from dataloading.feature_stats import STATS_FILE
from dataloading.features import FeatureSettings
from dataloading.storage import join, upload_atomic
from trainer import safe_load
from trainer.checkpoint import CONFIG, download, read_meta, read_stats, resolve
from trainer.config import Config, load_config
from trainer.embedder import FORMAT_VERSION
from trainer.models import PRESETS


def consolidated_state_dict(
    tag_url: str, storage: StorageConfig | None = None
) -> tuple[dict[str, torch.Tensor], Config, dict[str, Any]]:
    """The full fp32 model state (parameters and buffers) of the checkpoint at ``tag_url``, with its
    resolved config and metadata. ZeRO partitions are merged; a stage-0 fp32 checkpoint already
    holds the full module."""
    tag = tag_url.rstrip("/").rsplit("/", 1)[-1]
    with tempfile.TemporaryDirectory(prefix="avsa-export-") as tmp:
        local = os.path.join(tmp, tag)
        download(tag_url, local, storage)
        safe_load.verify(local)  # before zero_to_fp32, which unpickles DeepSpeed's files in full
        cfg = load_config(os.path.join(local, CONFIG))
        if any(name.endswith("optim_states.pt") for name in os.listdir(local)):
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            with contextlib.redirect_stdout(io.StringIO()):  # it prints each file it merges: noise here
                state = get_fp32_state_dict_from_zero_checkpoint(tmp, tag=tag)
        else:
            saved = safe_load.load(os.path.join(local, "mp_rank_00_model_states.pt"))
            state = {k: v.float() if v.is_floating_point() else v for k, v in saved["module"].items()}
    return state, cfg, read_meta(tag_url, storage)


def submodule_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries under ``prefix.``, renamed relative to it, as contiguous tensors (safetensors needs that)."""
    return {k[len(prefix) + 1 :]: v.contiguous() for k, v in state.items() if k.startswith(prefix + ".")}


def export(
    checkpoint: str,
    out: str,
    cfg: Config,
    register_as: str | None = None,
) -> dict[str, Any]:
    """Export the checkpoint at ``checkpoint`` (a tag URL, or a root whose ``latest`` is followed).

    Writes the encoders and ``config.json`` to ``out``; if the checkpoint's run was tracked and
    ``cfg.tracking.uri`` is set, logs the files to that run under ``encoders/`` and registers them as
    a new version of the model ``register_as`` (default: the training run's experiment name +
    ``-encoders``). ``cfg`` gives storage and tracking access; the checkpoint has its own config.
    Returns the written config.json content (with ``model_version`` when registered).
    """
    storage = cfg.storage
    tag_url = resolve(checkpoint, checkpoint, storage)
    assert tag_url is not None
    state, trained, meta = consolidated_state_dict(tag_url, storage)
    stats = read_stats(tag_url, storage)
    preset = PRESETS[trained.model.preset]
    info: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "widths": list(preset.widths),
        "video_depths": list(preset.video_depths),
        "audio_channels": int(state["audio_encoder.stem.0.weight"].shape[1]),
        # What a fine-tuning pipeline must reproduce to feed the audio encoder.
        "audio_features": asdict(FeatureSettings.of(trained.data))
        | {"audio_seconds": trained.data.audio_seconds},
        "feature_stats": stats is not None,
        "video": {
            "frames": trained.data.frames,
            "fps": trained.data.fps,
            "crop_size": trained.data.crop_size,
        },
        "model": asdict(trained.model),
        "source": {"checkpoint": tag_url, "step": meta["step"], "run_id": meta.get("run_id")},
    }
    with tempfile.TemporaryDirectory(prefix="avsa-export-out-") as tmp:
        for name in ("audio_encoder", "video_encoder"):
            save_file(submodule_state(state, name), os.path.join(tmp, f"{name}.safetensors"))
        with open(os.path.join(tmp, "config.json"), "w") as fh:
            json.dump(info, fh, indent=1)
        if stats is not None:
            with open(os.path.join(tmp, STATS_FILE), "wb") as fh:
                fh.write(stats.to_json())
        for name in sorted(os.listdir(tmp)):
            upload_atomic(os.path.join(tmp, name), join(out, name), storage)
        run_id = meta.get("run_id")
        if cfg.tracking.resolved()[0] and run_id:
            name = register_as or f"{trained.tracking.experiment}-encoders"
            info["model_version"] = register(cfg, run_id, tmp, name)
    return info


def register(cfg: Config, run_id: str, folder: str, name: str) -> str:
    """Log ``folder`` to the run as ``encoders/`` and register it as a version of model ``name``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking.resolved()[0])
    client.log_artifacts(run_id, folder, "encoders")
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/encoders"
    return client.create_model_version(name, source=source, run_id=run_id).version


def checkpoint_of_run(cfg: Config, run_id: str) -> str:
    """The newest checkpoint URL that the tracked run ``run_id`` recorded (its ``checkpoint.latest`` tag)."""
    from mlflow.tracking import MlflowClient

    uri = cfg.tracking.resolved()[0]
    if not uri:
        raise ValueError("--run needs a tracking server: set --tracking.uri")
    tags = MlflowClient(uri).get_run(run_id).data.tags
    if "checkpoint.latest" not in tags:
        raise ValueError(f"MLflow run {run_id} recorded no checkpoint (no checkpoint.latest tag)")
    return tags["checkpoint.latest"]
