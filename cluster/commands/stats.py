"""`avsa stats`: the audio features' normalisation statistics of a shard dataset, computed and stored
beside it (training computes them on its first run when they are missing)."""

from __future__ import annotations

import argparse

from cluster.cli import add_config_arguments
from trainer.config import Config

EPILOG = """\
The statistics are per channel × mel band mean and std of the steered training features (each clip's
FOA steered toward its viewpoints, as the loader samples them), from --data.stats_clips clips spread
over the dataset. They go to DATA/feature_stats/<feature>-<settings hash>.json (or --data.stats_url),
travel with every checkpoint and export, and are applied in training, evaluation and the exported
embedder. Statistics of other feature settings, or of an older version of the dataset, are refused.

examples:
  avsa stats --data.url s3://bucket/shards
  avsa stats --data.url .avsa/demo/shards --data.feature cardioids --data.n_mels 64
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "stats",
        help="compute the normalisation statistics of a dataset's audio features (once per setting)",
        description="Computes (or, if present and current, reads) the per channel × mel mean and std "
        "of the dataset's steered audio features for the --data.* feature settings and prints where "
        "they are.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "--recompute", action="store_true", help="compute them again even if current ones exist"
    )
    add_config_arguments(parser, "data", "storage")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    import numpy as np

    from dataloading.dataset_stats import load_or_compute

    stats, url = load_or_compute(cfg.data, cfg.storage, recompute=args.recompute)
    mean, std = np.asarray(stats.mean), np.asarray(stats.std)
    channels, mels = mean.shape
    print(f"{url}: {cfg.data.feature}, {channels} channels × {mels} mels from {stats.count} frames")
    for channel, (m, s) in enumerate(zip(mean, std, strict=True)):
        spread = f"range {m.min():+.3f} … {m.max():+.3f}"
        print(f"  channel {channel}: mean {m.mean():+.3f} ({spread}), std {s.mean():.3f}")
    return 0
