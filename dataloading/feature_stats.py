"""Per channel × mel normalisation statistics of audio features, computed from a dataset and saved with it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from dataloading.storage import filesystem, write_bytes_atomic

# Floors the standard deviation so constant bins (e.g. always at the dB floor) do not blow up.
_MIN_STD = 1e-5


@dataclass
class FeatureStats:
    """Mean and standard deviation ``[C][F]`` of each feature channel and mel band.

    ``settings`` records the extractor settings they were computed with (sample rate, FFT, mels, feature)
    so a mismatched file is refused instead of silently mis-normalising.
    """

    mean: list[list[float]]
    std: list[list[float]]
    count: int
    settings: dict[str, Any] = field(default_factory=dict)

    def tensors(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` as float32 tensors ``[C, F]``."""
        return (
            torch.tensor(self.mean, dtype=torch.float32, device=device),
            torch.tensor(self.std, dtype=torch.float32, device=device),
        )

    def save(self, url: str) -> None:
        """Write as JSON to a path or fsspec URL (atomically)."""
        write_bytes_atomic(url, json.dumps(asdict(self)).encode())

    @classmethod
    def load(cls, url: str, expect_settings: dict[str, Any] | None = None) -> FeatureStats:
        """Read from a path or fsspec URL; with ``expect_settings`` raise if any recorded setting differs."""
        fs, path = filesystem(url)
        with fs.open(path, "rb") as fh:
            stats = cls(**json.loads(fh.read()))
        for key, value in (expect_settings or {}).items():
            if key in stats.settings and stats.settings[key] != value:
                raise ValueError(
                    f"{url}: stats computed with {key}={stats.settings[key]!r}, expected {value!r}"
                )
        return stats


def compute_stats(
    extract: Callable[..., Tensor], batches: Iterable[Tensor | tuple[Any, ...]], settings: dict[str, Any]
) -> FeatureStats:
    """Accumulate per channel × mel mean/std of ``extract(*batch)`` over a dataset iterator.

    Each batch is an FOA tensor or a tuple of arguments for ``extract`` (e.g. ``(foa, azimuth,
    elevation)``); ``extract`` returns ``[..., C, F, T]`` and must not normalise itself.
    Sums are kept in float64 so long datasets do not lose precision.
    """
    total = total_sq = None
    count = 0
    with torch.no_grad():
        for batch in batches:
            feats = extract(*batch) if isinstance(batch, tuple) else extract(batch)
            flat = feats.movedim((-3, -2), (0, 1)).flatten(2).double()  # [C, F, everything else]
            s, sq = flat.sum(-1).cpu(), flat.square().sum(-1).cpu()
            total = s if total is None else total + s
            total_sq = sq if total_sq is None else total_sq + sq
            count += flat.shape[-1]
    if total is None or total_sq is None:
        raise ValueError("no batches to compute feature statistics from")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt().clamp_min(_MIN_STD)
    return FeatureStats(mean.tolist(), std.tolist(), count, dict(settings))
