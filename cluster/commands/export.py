"""`avsa export`: fp32 encoders (safetensors + config.json) from a checkpoint or a tracked run."""

from __future__ import annotations

import argparse
import json

from cluster.cli import add_config_arguments
from trainer.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="write the trained encoders as safetensors for fine-tuning, and register them in MLflow",
        description="Consolidates the checkpoint's ZeRO partitions to fp32 and writes "
        "audio_encoder.safetensors, video_encoder.safetensors, feature_stats.json and config.json to "
        "--out. Fine-tune with trainer.embedder.load_audio_embedder(URL): raw FOA at any sample rate in, "
        "embeddings out, with the training features and statistics; it needs only torch and safetensors.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", metavar="URL", help="a checkpoint folder, or a checkpoint root (its latest)"
    )
    source.add_argument("--run", metavar="RUN_ID", help="the MLflow run whose newest checkpoint to export")
    parser.add_argument("--out", required=True, metavar="URL", help="output folder: local path or s3:// URL")
    parser.add_argument(
        "--name", metavar="MODEL", help="registered model name (default: <training experiment>-encoders)"
    )
    add_config_arguments(parser, "tracking", "storage")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from trainer.export import checkpoint_of_run, export

    checkpoint = args.checkpoint or checkpoint_of_run(cfg, args.run)
    info = export(checkpoint, args.out, cfg, register_as=args.name)
    print(json.dumps({"out": args.out, **info["source"], "model_version": info.get("model_version")}))
    return 0
