"""Reading the evaluation inputs: labeled FOA sets (WebDataset shards + manifest) and held-out clips.

The labeled sets are the ones :mod:`dataloading.synth.evalsets` writes: per sample ``KEY.flac``
(4-channel FOA, ACN/SN3D) and ``KEY.json``; ``manifest.json`` lists each split's shards.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from dataloading.config import StorageConfig
from dataloading.schema import MANIFEST_NAME
from dataloading.storage import filesystem, join
from trainer.config import Config
from trainer.data import Batch, make_source

# Synthetic sources draw fresh clips per epoch, so this far-off epoch holds clips no training run has
# seen. A shard loader only reshuffles by epoch: held-out clips there must come from held-out shards.
HELD_OUT_EPOCH = 1_000_000


@dataclass
class LabeledSet:
    """One split of a labeled set: FOA ``[N, 4, samples]`` float32, its JSON per clip, and the manifest."""

    foa: Tensor
    meta: list[dict[str, Any]]
    manifest: dict[str, Any]

    @property
    def sample_rate(self) -> int:
        return int(self.manifest["sample_rate"])


def read_manifest(url: str, storage: StorageConfig | None = None) -> dict[str, Any]:
    fs, path = filesystem(join(url, MANIFEST_NAME), storage)
    return json.loads(fs.cat_file(path))


def read_split(url: str, split: str, storage: StorageConfig | None = None) -> LabeledSet:
    """Every clip of ``split`` of the labeled set at ``url``, in shard order; clips of unequal length
    are cut to the shortest."""
    manifest = read_manifest(url, storage)
    if split not in manifest["splits"]:
        raise KeyError(f"{url}: no split {split!r} (has {sorted(manifest['splits'])})")
    waves: list[np.ndarray] = []
    metas: list[dict[str, Any]] = []
    for shard in manifest["splits"][split]["shards"]:
        fs, path = filesystem(join(url, shard["name"]), storage)
        with tarfile.open(fileobj=io.BytesIO(fs.cat_file(path))) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for member in tar.getmembers():
                key, ext = member.name.rsplit(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
        for parts in members.values():
            wave, _ = sf.read(io.BytesIO(parts["flac"]), dtype="float32", always_2d=True)
            waves.append(wave.T)
            metas.append(json.loads(parts["json"]))
    if not waves:
        raise ValueError(f"{url}: split {split!r} has no samples")
    n = min(w.shape[1] for w in waves)
    return LabeledSet(torch.from_numpy(np.stack([w[:, :n] for w in waves])), metas, manifest)


def held_out_batches(
    cfg: Config, url: str, batches: int, device: torch.device, storage: StorageConfig | None = None
) -> list[Batch]:
    """``batches`` batches of B clips × K viewpoints from the source ``url`` names (``synthetic://`` or
    a held-out shard set), read with the run's data settings (``cfg``, the checkpoint's config) so the
    encoders get the inputs they know; ``storage`` replaces the run's storage settings when given."""
    held_out = replace(
        cfg,
        data=replace(cfg.data, url=url),
        train=replace(cfg.train, steps_per_epoch=batches),
        storage=storage or cfg.storage,
    )
    source = make_source(held_out, 0, 1, device)
    source.set_epoch(HELD_OUT_EPOCH)
    out = [batch for _, batch in zip(range(batches), source, strict=False)]
    if len(out) < 2:
        raise ValueError(f"{url}: got {len(out)} batches of held-out clips; need at least 2 to split")
    return out
