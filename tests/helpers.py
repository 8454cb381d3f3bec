"""Builders that several test modules share (instead of importing from one another)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from dataloading.dcase import FRAME_SECONDS, Event, format_labels, parse_labels
from dataloading.foa import encode_plane_wave

SEED_CLASSES = (0, 3, 8)  # female speech, telephone, music: each a tone of its own pitch below


def write_starss_tree(
    root: Path, train: int = 3, test: int = 2, seconds: float = 6.0, rate: int = 24000, seed: int = 0
) -> dict[str, list[Event]]:
    """A STARSS23-format tree (foa_dev wav + metadata_dev csv; no video) of plane-wave tones: class c
    of :data:`SEED_CLASSES` is a tone at 300·(k+1) Hz (k its position there), from a fixed direction,
    on for a random stretch of whole 100-ms frames. Each recording has two events that overlap.
    Returns ``{split folder/stem: events}`` as the CSVs hold them (whole degrees)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    frames = round(seconds / FRAME_SECONDS)
    per_frame = round(rate * FRAME_SECONDS)
    truth: dict[str, list[Event]] = {}
    for index in range(train + test):
        split = "dev-train-sony" if index < train else "dev-test-sony"
        stem = f"fold{3 if index < train else 4}_room{index % 2 + 1}_mix{index + 1:03d}"
        foa = torch.zeros(4, n, dtype=torch.float64)
        events: list[Event] = []
        first_on = int(rng.integers(0, frames // 3))
        for source, k in enumerate(rng.choice(len(SEED_CLASSES), size=2, replace=False)):
            on = first_on if source == 0 else first_on + frames // 4  # the second starts inside the first
            off = min(frames, on + frames // 2)
            az, el = float(rng.uniform(-math.pi, math.pi)), float(rng.uniform(-0.5, 0.5))
            t = torch.arange(n, dtype=torch.float64) / rate
            tone = 0.3 * torch.sin(2 * math.pi * 300.0 * (k + 1) * t)
            gate = torch.zeros(n, dtype=torch.float64)
            gate[on * per_frame : off * per_frame] = 1.0
            foa += encode_plane_wave(tone * gate, az, el)
            cls = SEED_CLASSES[k]
            events += [Event(f, cls, source, az, el) for f in range(on, off)]
        foa += 1e-3 * torch.randn(4, n, dtype=torch.float64, generator=torch.Generator().manual_seed(index))
        for folder in ("foa_dev", "metadata_dev"):
            (root / folder / split).mkdir(parents=True, exist_ok=True)
        sf.write(root / "foa_dev" / split / f"{stem}.wav", foa.T.numpy(), rate, subtype="PCM_24")
        csv = format_labels(events)
        (root / "metadata_dev" / split / f"{stem}.csv").write_text(csv)
        truth[f"{split}/{stem}"] = parse_labels(csv, stem)  # as written: whole degrees
    return truth
