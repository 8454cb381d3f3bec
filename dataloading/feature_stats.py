"""Per channel × mel normalisation statistics of audio features: what they are, how they are accumulated,
where a dataset keeps them, and the check that refuses statistics of other feature settings.

A dataset keeps one file per feature setting under ``DATA/feature_stats/`` (:func:`dataset_stats_url`),
so runs with different features (a feature ablation) share a dataset without overwriting each other.
The statistics also travel with every checkpoint and export, so evaluation and fine-tuning normalise
exactly as training did.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from dataloading.config import StorageConfig
from dataloading.storage import filesystem, join, write_bytes_atomic

STATS_DIR = "feature_stats"
#: The file name of the statistics inside a checkpoint and an export.
STATS_FILE = "feature_stats.json"
# Floors the standard deviation so constant bins (e.g. always at the dB floor) do not blow up.
_MIN_STD = 1e-5


class StatsMismatch(ValueError):
    """Statistics computed with other feature settings (or from another dataset) than they are used for."""


@dataclass
class FeatureStats:
    """Mean and standard deviation ``[C][F]`` of each feature channel and mel band.

    ``settings`` records the extractor settings they were computed with (sample rate, FFT, mels, feature,
    definition version), so a mismatched file is refused instead of silently mis-normalising; ``dataset``
    is the fingerprint of the dataset they were computed from ("" when not from a dataset).
    """

    mean: list[list[float]]
    std: list[list[float]]
    count: int
    settings: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""

    def tensors(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` as float32 tensors ``[C, F]``."""
        return (
            torch.tensor(self.mean, dtype=torch.float32, device=device),
            torch.tensor(self.std, dtype=torch.float32, device=device),
        )

    def check(self, settings: dict[str, Any], source: str = "these statistics") -> None:
        """Raise :class:`StatsMismatch` naming both values of every setting that differs from ``settings``."""
        keys = sorted(set(self.settings) | set(settings))
        differ = [k for k in keys if self.settings.get(k) != settings.get(k)]
        if differ:
            ours = ", ".join(f"{k}={self.settings.get(k)!r}" for k in differ)
            theirs = ", ".join(f"{k}={settings.get(k)!r}" for k in differ)
            raise StatsMismatch(
                f"{source} were computed with {ours}, but the features here use {theirs}; compute "
                "statistics for these settings (`avsa stats --data.url …` with the same --data.* options)"
            )

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> FeatureStats:
        return cls(**json.loads(data))

    def save(self, url: str, storage: StorageConfig | None = None) -> None:
        """Write as JSON to a path or fsspec URL (atomically)."""
        write_bytes_atomic(url, self.to_json(), storage)

    @classmethod
    def load(
        cls, url: str, expect_settings: dict[str, Any] | None = None, storage: StorageConfig | None = None
    ) -> FeatureStats:
        """Read from a path or fsspec URL; with ``expect_settings`` refuse other settings (naming both)."""
        fs, path = filesystem(url, storage)
        stats = cls.from_json(fs.cat_file(path))
        if expect_settings is not None:
            stats.check(expect_settings, f"the statistics in {url}")
        return stats


def settings_digest(settings: dict[str, Any]) -> str:
    """A short stable hash of feature settings (10 hex digits)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def dataset_stats_url(data_url: str, settings: dict[str, Any]) -> str:
    """Where the dataset at ``data_url`` keeps statistics for these settings:
    ``DATA/feature_stats/<feature>-<settings digest>.json``."""
    return join(data_url, STATS_DIR, f"{settings['feature']}-{settings_digest(settings)}.json")


def compute_stats(
    extract: Callable[..., Tensor],
    batches: Iterable[Tensor | tuple[Any, ...]],
    settings: dict[str, Any],
    dataset: str = "",
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
    return FeatureStats(mean.tolist(), std.tolist(), count, dict(settings), dataset)
