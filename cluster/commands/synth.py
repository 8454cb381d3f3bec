"""`avsa synth`: demo and test data — 360° videos with FOA audio and ground truth, and eval sets."""

from __future__ import annotations

import argparse

from cluster.cli import add_config_arguments, add_config_flag, parse_size
from trainer.config import Config

EPILOG = """\
writes, under --out (a local path or s3:// URL):
  video_NNNNN.mp4   equirectangular H.264 (constant frame rate, 2:1) with a 4-channel FOA AAC
                    track (AmbiX: ACN W,Y,Z,X, SN3D, 48 kHz), like a YouTube-360 download
  video_NNNNN.json  ground truth: every source's class, sound file, trajectory [t, azimuth,
                    elevation] in degrees, on/off times, visibility; room, seed, background
  synth.json        options, skipped assets with reasons, failed videos
  eval/classification/, eval/doa/   with --eval-sets: WebDataset shards + manifest.json

--layout starss23 writes the same kind of scenes as the STARSS23 development tree instead:
  foa_dev/dev-{train,test}-sony/foldF_roomR_mixNNN.wav   4-channel AmbiX, 24-bit PCM, 24 kHz
  video_dev/<same>.mp4                                   equirect H.264, video only
  metadata_dev/<same>.csv                                DCASE labels, 100-ms frames, degrees, cm
  (the last quarter of the scenes is dev-test, fold 4; the rest dev-train, fold 3; one room per
  scene). Only sounds with a STARSS23 class are drawn (STARSS23 class <- sound labels):
{mapping}
  empty classes (no sound of theirs in the packs): {empty}
--layout yt360 writes video/{YTID}-{START}.mp4 (video only), audio/{YTID}-{START}.m4a (AAC
  4.0, AmbiX), train.txt, test.txt and segments.txt, with fake YouTube ids from the seed.

Real assets (CC0 panoramas, recorded sounds; ~70 MB) are fetched once with apt-get download
into ~/.cache/avsa/assets (or $AVSA_ASSET_CACHE); without apt, procedural stand-ins are used.

examples:
  avsa synth --out .avsa/demo/raw --videos 4 --seconds 20
  avsa synth --out s3://avsa/raw --videos 20 --seconds 60 --workers 2 --eval-sets
  avsa synth --out /data/fake-STARSS23 --layout starss23 --videos 8 --seconds 30
  avsa synth --out .avsa/easy/raw --world easy --videos 400 --seconds 2 --size 256x128 --fps 16
"""


def epilog() -> str:
    """The help epilog, with the STARSS23 class mapping from its one table."""
    from dataloading.synth.trees import EMPTY_STARSS_CLASSES, STARSS_CLASS_OF_LABEL

    by_class: dict[str, list[str]] = {}
    for label, name in STARSS_CLASS_OF_LABEL.items():
        by_class.setdefault(name, []).append(label)
    mapping = "\n".join(f"    {name:<18} <- {', '.join(labels)}" for name, labels in by_class.items())
    return EPILOG.replace("{mapping}", mapping).replace("{empty}", ", ".join(EMPTY_STARSS_CLASSES))


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "synth",
        help="generate demo/test 360° videos with FOA audio, ground truth and labeled eval sets",
        description="Generate synthetic 360° videos with first-order ambisonic audio and ground truth. "
        "Deterministic: the same --seed gives the same bytes, whatever --workers.",
        epilog=epilog(),
    )
    for name, flag, metavar in (
        ("out", "--out", "URL"),
        ("videos", "--videos", "N"),
        ("seconds", "--seconds", "S"),
        ("seed", "--seed", "K"),
        ("workers", "--workers", "W"),
        ("fps", "--fps", None),
        ("layout", "--layout", None),
        ("world", "--world", None),
        ("classification_clips", "--eval-clips", "N"),
        ("doa_clips", "--doa-clips", "N"),
        ("assets", "--assets", "DIR"),
    ):
        add_config_flag(parser, f"synth.{name}", flag, metavar=metavar)
    add_config_flag(parser, "synth.size", "--size", value=parse_size, metavar="WxH")
    add_config_flag(parser, "synth.eval_sets", "--eval-sets", const=True)
    add_config_flag(
        parser,
        "synth.fetch",
        "--no-fetch",
        const=False,
        says="Use only the real assets the cache holds; fetch none.",
    )
    add_config_arguments(parser, "synth", "storage")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dataloading.storage import join
    from dataloading.synth.assets import build_catalog
    from dataloading.synth.evalsets import classification_set, doa_set
    from dataloading.synth.generate import generate, options_of

    s = cfg.synth
    catalog = build_catalog(s.assets or None, fetch=s.fetch)
    opts = options_of(s, cfg.storage)
    summary = generate(opts, catalog)
    made = s.videos - len(summary["failed"])
    print(f"{made}/{s.videos} videos in {summary['wall_seconds']:.1f} s -> {s.out}")
    if s.eval_sets:
        cls = classification_set(
            join(s.out, "eval/classification"), catalog, s.classification_clips, s.seed, storage=cfg.storage
        )
        doa = doa_set(join(s.out, "eval/doa"), catalog, s.doa_clips, s.seed, storage=cfg.storage)
        print(
            f"eval sets: classification {len(cls['classes'])} classes, "
            f"{cls['splits']['train']['samples']} train / {cls['splits']['test']['samples']} test clips; "
            f"doa {doa['splits']['train']['samples']} train / {doa['splits']['test']['samples']} test clips"
        )
    return 1 if summary["failed"] else 0
