"""`avsa synth`: demo and test data — 360° videos with FOA audio and ground truth, and eval sets."""

from __future__ import annotations

import argparse
import re

from cluster.cli import add_config_arguments
from dataloading.layouts import LAYOUTS
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
"""


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 1024x512; got {text!r}")
    width, height = int(match[1]), int(match[2])
    if width != 2 * height or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"equirect size must be 2:1 with even sides; got {text}")
    return width, height


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
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="URL", help="output folder: local path or s3:// URL")
    parser.add_argument("--videos", type=int, default=4, metavar="N", help="number of videos (default 4)")
    parser.add_argument(
        "--seconds", type=float, default=20.0, metavar="S", help="length of each video (default 20)"
    )
    parser.add_argument("--seed", type=int, default=0, metavar="K", help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=2, metavar="W", help="parallel processes (default 2)")
    parser.add_argument(
        "--size",
        type=parse_size,
        default=(1024, 512),
        metavar="WxH",
        help="frame size, 2:1 (default 1024x512)",
    )
    parser.add_argument("--fps", type=int, default=30, help="frames per second, constant (default 30)")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="files",
        help="files (default: video_NNNNN.mp4 + .json), or the STARSS23 or YT-360 dataset tree",
    )
    parser.add_argument(
        "--eval-sets",
        action="store_true",
        help="also write the classification and DOA eval sets under OUT/eval/",
    )
    parser.add_argument(
        "--eval-clips",
        type=int,
        default=30,
        metavar="N",
        help="classification clips per class in each split (default 30: a 3-point standard error)",
    )
    parser.add_argument(
        "--doa-clips", type=int, default=300, metavar="N", help="DOA clips in each split (default 300)"
    )
    parser.add_argument(
        "--assets", metavar="DIR", help="asset cache (default $AVSA_ASSET_CACHE or ~/.cache/avsa/assets)"
    )
    parser.add_argument(
        "--no-fetch", action="store_true", help="use only what the asset cache holds; never call apt"
    )
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dataloading.storage import join
    from dataloading.synth.assets import build_catalog
    from dataloading.synth.evalsets import classification_set, doa_set
    from dataloading.synth.generate import SynthOptions, generate
    from dataloading.synth.trees import STARSS_RATE

    catalog = build_catalog(args.assets, fetch=not args.no_fetch)
    opts = SynthOptions(
        out=args.out,
        videos=args.videos,
        seconds=args.seconds,
        seed=args.seed,
        workers=args.workers,
        size=args.size,
        fps=args.fps,
        layout=args.layout,
        storage=cfg.storage,
    )
    if args.layout == "starss23":
        opts.rate = STARSS_RATE
    summary = generate(opts, catalog)
    made = args.videos - len(summary["failed"])
    print(f"{made}/{args.videos} videos in {summary['wall_seconds']:.1f} s -> {args.out}")
    if args.eval_sets:
        cls = classification_set(
            join(args.out, "eval/classification"), catalog, args.eval_clips, args.seed, storage=cfg.storage
        )
        doa = doa_set(join(args.out, "eval/doa"), catalog, args.doa_clips, args.seed, storage=cfg.storage)
        print(
            f"eval sets: classification {len(cls['classes'])} classes, "
            f"{cls['splits']['train']['samples']} train / {cls['splits']['test']['samples']} test clips; "
            f"doa {doa['splits']['train']['samples']} train / {doa['splits']['test']['samples']} test clips"
        )
    return 1 if summary["failed"] else 0
