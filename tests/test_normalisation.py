"""Feature statistics end to end: computed from a dataset on the first training run and stored beside it,
saved with every checkpoint and in the export, applied by the exported embedder exactly as in training;
statistics of other settings, or of a rewritten dataset, are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dataloading.dataset_stats import load_or_compute, stats_location
from dataloading.feature_stats import STATS_DIR, STATS_FILE, FeatureStats, StatsMismatch
from dataloading.features import FeatureExtractor
from dataloading.foa import encode_plane_wave
from dataloading.synth.samples import write_dataset
from tests.distributed import run_distributed
from trainer.checkpoint import read_stats
from trainer.config import Config, load_config
from trainer.export import consolidated_state_dict, export
from trainer.models import AVSAModel

pytestmark = pytest.mark.integration

OVERRIDES = {
    "model.preset": "tiny",
    "data.batch_size": 2,
    "data.viewpoints": 2,
    "data.frames": 4,
    "data.crop_size": 32,
    "data.n_mels": 16,
    "data.workers": 1,
    "train.steps_per_epoch": 1,
    "train.avc_epochs": 1,
    "train.avsa_epochs": 1,
    "tracking.uri": "off",
}


def _train(rank: int, world_size: int, cfg: Config) -> str | None:
    from trainer.train import train

    return train(cfg).checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-step run on a fresh shard dataset (no statistics yet), then its export."""
    tmp = tmp_path_factory.mktemp("norm")
    data = str(tmp / "shards")
    write_dataset(data, [4, 4], seconds=1.5)
    cfg = load_config(None, {**OVERRIDES, "data.url": data, "train.checkpoint_url": str(tmp / "ckpt")})
    (checkpoint,) = run_distributed(_train, 1, cfg, timeout_s=400)
    export(checkpoint, str(tmp / "export"), cfg)
    return {"tmp": tmp, "cfg": cfg, "checkpoint": checkpoint}


def test_first_run_stores_statistics_beside_the_dataset_and_with_the_checkpoint(
    trained: dict[str, Any],
) -> None:
    cfg, checkpoint = trained["cfg"], trained["checkpoint"]
    location = stats_location(cfg.data)
    assert location.startswith(f"{cfg.data.url}/{STATS_DIR}/logmel_iv-")
    beside = FeatureStats.load(location)
    with_checkpoint = read_stats(checkpoint)
    exported = FeatureStats.load(str(trained["tmp"] / "export" / STATS_FILE))
    assert beside == with_checkpoint == exported
    assert np.asarray(beside.mean).shape == (7, 16) and beside.count > 0 and beside.dataset
    assert beside.settings == FeatureExtractor.from_config(cfg.data).settings
    # A second run reuses them: nothing is recomputed (the file is untouched).
    mtime = Path(location).stat().st_mtime_ns
    assert load_or_compute(cfg.data)[0] == beside and Path(location).stat().st_mtime_ns == mtime


EMBED = """
import sys, torch
from trainer.embedder import load_audio_embedder
embedder = load_audio_embedder(sys.argv[1])
foa = torch.load(sys.argv[2])
with torch.no_grad():
    out = {rate: embedder(wave, sample_rate=rate) for rate, wave in foa.items()}
heavy = {"deepspeed", "ray", "mlflow", "webdataset", "nvidia.dali"} & set(sys.modules)
assert not heavy, f"the embedder imported {heavy}"
torch.save(out, sys.argv[3])
"""


def test_exported_embedder_gives_the_training_models_embeddings_from_raw_foa(trained: dict[str, Any]) -> None:
    tmp, cfg, checkpoint = trained["tmp"], trained["cfg"], trained["checkpoint"]
    info = json.loads((tmp / "export" / "config.json").read_text())
    assert info["feature_stats"] is True and info["audio_features"]["feature"] == "logmel_iv"
    # The training model on training's features: the checkpoint's weights, the dataset's statistics.
    state, _, _ = consolidated_state_dict(checkpoint)
    model = AVSAModel(cfg.model, 7)
    model.load_state_dict(state)
    extractor = FeatureExtractor.from_config(cfg.data, read_stats(checkpoint))
    t = torch.arange(48000, dtype=torch.float64) / 48000
    tone = torch.sin(2 * torch.pi * 440 * t) + 0.3 * torch.sin(2 * torch.pi * 2500 * t)
    foa48 = encode_plane_wave(tone.float()[None].expand(3, -1), torch.tensor([0.3, -2.0, 1.0]), 0.2)
    foa24 = foa48[..., ::2].contiguous()  # the tones are far below 12 kHz: decimation is exact enough
    with torch.no_grad():
        expected = model.eval().audio_encoder(extractor(foa24))
    torch.save({24000: foa24, 48000: foa48}, tmp / "foa.pt")
    subprocess.run(
        [sys.executable, "-c", EMBED, tmp / "export", tmp / "foa.pt", tmp / "out.pt"], check=True, timeout=120
    )
    out = torch.load(tmp / "out.pt")
    torch.testing.assert_close(out[24000], expected, atol=1e-5, rtol=0)
    # At 48 kHz the embedder resamples first: the same embeddings up to the resampler's small error.
    assert torch.nn.functional.cosine_similarity(out[48000], expected).min() > 0.99


def test_statistics_of_other_settings_or_a_rewritten_dataset_are_refused(trained: dict[str, Any]) -> None:
    cfg = trained["cfg"]
    stored = stats_location(cfg.data)
    with pytest.raises(StatsMismatch, match=r"feature='logmel_iv'.*feature='cardioids'"):
        load_or_compute(replace(cfg.data, feature="cardioids", stats_url=stored))
    rewritten = trained["tmp"] / "rewritten"
    write_dataset(str(rewritten), [4, 4], seconds=1.5)
    Path(rewritten / STATS_DIR).mkdir()
    relocated = stats_location(replace(cfg.data, url=str(rewritten)))
    Path(relocated).write_bytes(Path(stored).read_bytes())  # statistics of a dataset of other shards...
    write_dataset(str(rewritten), [4, 4, 2], seconds=1.5)  # ...and now it is rewritten with more
    with pytest.raises(StatsMismatch, match="rewritten"):
        load_or_compute(replace(cfg.data, url=str(rewritten)))
