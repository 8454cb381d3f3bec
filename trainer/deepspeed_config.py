"""The DeepSpeed config dict, generated from our typed :class:`trainer.config.Config`.

DeepSpeed is configured by one JSON-like dict; building it here keeps the typed config the single
source of truth (``--train.zero_stage 2`` on the command line, never a hand-edited ds_config.json).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from trainer.config import Config

Precision = Literal["fp32", "bf16"]

# DeepSpeed prints a line every `steps_per_print` steps; our loop logs its own metrics.
_NEVER = 2**31 - 1


def resolve_precision(precision: str, device_type: str) -> Precision:
    """``auto`` → bf16 on a GPU, fp32 elsewhere (CPU bf16 kernels are slower than fp32 ones). The
    config tree has already refused anything but auto, fp32 and bf16."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision  # type: ignore[return-value]


def input_dtype(precision: str, device_type: str) -> torch.dtype:
    """The dtype batches are cast to for the engine: bf16 when :func:`resolve_precision` says so."""
    return torch.bfloat16 if resolve_precision(precision, device_type) == "bf16" else torch.float32


def deepspeed_config(cfg: Config, device_type: str, load_universal: bool = False) -> dict[str, Any]:
    """DeepSpeed config for one data-parallel rank of batch ``cfg.data.batch_size`` clips.

    Optimiser: Adam with L2 weight decay as in the paper (``adam_w_mode: False``: DeepSpeed's "Adam"
    is AdamW unless told otherwise), the torch implementation (``torch_adam``) so no CUDA kernel has
    to be JIT-built; DeepSpeedCPUAdam would only pay off with optimizer offload, which we do not use.
    Schedule: linear warm-up over ``train.warmup_steps`` to ``train.lr``, then constant (the paper's
    constant rate); no scheduler at all when there is no warm-up. ``load_universal``: the engine will
    load a universal checkpoint (a resume on another world size, :mod:`trainer.elastic`).
    """
    t = cfg.train
    precision = resolve_precision(t.precision, device_type)
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": 1,
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
        # contiguous_gradients (DeepSpeed's default) copies each gradient into one buffer as backward
        # produces it, against memory fragmentation in models of billions of parameters; for ours the copy
        # only cost time (ZeRO 1: ~20 of ~110 ms a step of the tiny model on 1 CPU rank; ZeRO 2 ~12 ms).
        "zero_optimization": {"stage": t.zero_stage, "contiguous_gradients": False},
        "bf16": {"enabled": precision == "bf16"},
        "gradient_clipping": t.grad_clip,
        "optimizer": {
            "type": "Adam",
            "params": {
                "lr": t.lr,
                "weight_decay": t.weight_decay,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
                "adam_w_mode": False,
                "torch_adam": True,
            },
        },
    }
    if load_universal:
        ds["checkpoint"] = {"load_universal": True}
    if t.warmup_steps > 0:
        ds["scheduler"] = {
            "type": "WarmupLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": t.lr,
                "warmup_num_steps": t.warmup_steps,
                "warmup_type": "linear",
            },
        }
    return ds


def restart_warmup(engine: Any) -> None:
    """Start ``train.warmup_steps`` of warm-up again from the next step (a new curriculum stage); no-op
    without a scheduler. The scheduler's position is saved with every checkpoint, so a run resumed
    inside the warm-up goes on where it was."""
    if engine.lr_scheduler is not None:
        engine.lr_scheduler.step(0)  # WarmupLR's iteration 0: the lr of the warm-up's first step
