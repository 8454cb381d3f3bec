"""`avsa probe`: a learnability check: can the video trunk, with labels, learn the objects of the scenes?"""

from __future__ import annotations

import argparse

from cluster.cli import add_config_arguments, add_config_flag
from trainer.config import Config

EPILOG = """\
Both datasets must be `avsa synth` scenes (layout files) preprocessed by `avsa preprocess`, with the \
raw videos still where the manifest says: the labels come from the ground truth (video_NNNNN.json) \
beside each input video. A class is in a viewpoint when an object of it has at least a quarter of its \
width inside the crop.

examples:
  avsa probe --data.url .avsa/easy/shards --clips .avsa/easy/shards-heldout \\
    --model.preset tiny --data.batch_size 8 --data.frames 4 --data.crop_size 64 \\
    --data.n_mels 64 --data.workers 1 --train.lr 0.001
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "probe",
        help="check the video trunk can learn the scenes' object classes (supervised, held-out AUC)",
        description="Trains the video trunk of --model.preset and a linear head from scratch, with "
        "multi-label binary cross-entropy on the object classes in view of each viewpoint crop of "
        "--data.url (the training loader's batches, augmented), for --steps Adam steps at --train.lr; "
        "then prints the mean per-class ROC AUC on the held-out clips of --eval.clips_url (no "
        "augmentation) with a 95 % interval from a bootstrap over held-out scenes. Chance is 0.5.",
        epilog=EPILOG,
    )
    parser.add_argument("--steps", type=int, default=600, metavar="N", help="optimizer steps (default 600)")
    add_config_flag(parser, "eval.clips_url", "--clips", metavar="URL")
    add_config_flag(parser, "eval.device", "--device")
    add_config_arguments(parser, "data", "model", "train", "eval", "storage")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from evaluation.encoders import pick_device
    from evaluation.video_probe import run as probe

    result = probe(cfg, args.steps, pick_device(cfg.eval.device))
    for name, auc in result.per_class.items():
        print(f"  {name:<12} AUC {auc:.3f} ({result.positives[name]} held-out viewpoints with it in view)")
    a = result.auc
    print(
        f"video probe: held-out AUC {a.mean:.2f} [{a.low:.2f}, {a.high:.2f}] "
        f"({result.views} viewpoints of {a.groups} scenes; training loss {result.train_loss:.4f})"
    )
    return 0
