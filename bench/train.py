"""Training steps/s, DeepSpeed engine vs a plain PyTorch loop: tiny preset, CPU, same model and batch."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from dataloading.synth.batches import SyntheticSource
from trainer.config import Config, load_config
from trainer.data import TINY
from trainer.deepspeed_config import deepspeed_config
from trainer.losses import pretext_loss
from trainer.models import AVSAModel

Step = Callable[[], float]  # one optimizer step; returns the loss


def plain_step(cfg: Config, batch: tuple[torch.Tensor, ...]) -> Step:
    """The baseline: model, torch Adam (L2 decay), gradient-norm clipping, as DeepSpeed is configured."""
    torch.manual_seed(cfg.train.seed)
    model = AVSAModel(cfg.model, batch[1].shape[2])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    def step() -> float:
        loss, _ = pretext_loss(model(*batch), "avc", cfg.train.tau, cfg.train.avc_form)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        return loss.item()

    return step


def deepspeed_step(cfg: Config, batch: tuple[torch.Tensor, ...]) -> Step:
    """The same model and batch through ``deepspeed.initialize`` with our generated config."""
    import deepspeed

    torch.manual_seed(cfg.train.seed)
    model = AVSAModel(cfg.model, batch[1].shape[2])
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), config=deepspeed_config(cfg, "cpu")
    )

    def step() -> float:
        loss, _ = pretext_loss(engine(*batch), "avc", cfg.train.tau, cfg.train.avc_form)
        engine.backward(loss)
        engine.step()
        return loss.item()

    return step


def steps_per_second(step: Step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return n / (time.perf_counter() - start)


def main(argv: list[str]) -> float:
    """Print both throughputs (medians over interleaved blocks) and return DeepSpeed / plain."""
    parser = argparse.ArgumentParser(prog="python -m bench train")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=9, help="timed blocks per loop, interleaved")
    parser.add_argument("--zero-stage", type=int, default=Config().train.zero_stage)
    parser.add_argument(
        "--inputs",
        choices=("paper", "tiny"),
        default="paper",
        help="paper: the reference input sizes (K=4 viewpoints of 8x112x112 frames, 128 mels x 101 "
        "frames); tiny: the test sizes (K=2, 4x32x32, 32 x 33), where a ~30 ms step makes the "
        "engine's fixed per-step bookkeeping (~8 ms with ZeRO 1, ~3 ms with ZeRO 0) dominate",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="clips per step")
    args = parser.parse_args(argv)

    from trainer.train import setup_distributed

    setup_distributed()  # a one-rank gloo group, as DeepSpeed needs one
    inputs = TINY if args.inputs == "tiny" else {"model.preset": "tiny"}
    overrides = {"train.zero_stage": args.zero_stage, "data.batch_size": args.batch_size}
    cfg = load_config(None, {**inputs, **overrides})
    b = SyntheticSource(cfg.data, 1).batch(0, 0)
    batch = (b.video, b.audio, b.directions)
    loops = {"plain PyTorch": plain_step(cfg, batch), "DeepSpeed engine": deepspeed_step(cfg, batch)}

    # Same weights and data: the first steps must agree before the timings mean anything.
    torch.manual_seed(1)
    first_plain = loops["plain PyTorch"]()
    torch.manual_seed(1)
    first_ds = loops["DeepSpeed engine"]()
    if abs(first_plain - first_ds) > 1e-5 * abs(first_plain):
        raise AssertionError(f"first-step losses differ: plain {first_plain}, DeepSpeed {first_ds}")

    rates: dict[str, list[float]] = {name: [] for name in loops}
    for step in loops.values():
        steps_per_second(step, 3)  # warm-up
    # Interleaved blocks: load from other processes on a shared machine hits both loops alike.
    for _ in range(args.blocks):
        for name, step in loops.items():
            rates[name].append(steps_per_second(step, args.steps))
    median = {name: statistics.median(r) for name, r in rates.items()}
    # Ratio of each pair of neighbouring blocks, then the median: robust to load that drifts.
    plain_rates, ds_rates = rates.values()
    paired = statistics.median(ds / plain for plain, ds in zip(plain_rates, ds_rates, strict=True))
    d = cfg.data
    print(
        f"tiny preset, {args.inputs} inputs: B={d.batch_size} clips x K={d.viewpoints} viewpoints, "
        f"video {d.frames}x{d.crop_size}x{d.crop_size}, audio {d.n_mels} mels, "
        f"ZeRO {args.zero_stage}, fp32, 1 rank, torch threads {torch.get_num_threads()}"
    )
    for name, rate in median.items():
        print(f"{name:>17}: {rate:.2f} steps/s ({rate * d.batch_size:.1f} clips/s)")
    print(f"DeepSpeed / plain, median of {args.blocks} paired blocks: {paired:.3f}")
    return paired
