"""`avsa eval`: evaluate one checkpoint in the foreground and print the benchmark table."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from cluster.cli import add_config_arguments, add_config_flag
from trainer.config import Config

if TYPE_CHECKING:  # the evaluation stack (torch, mlflow) loads only when a command runs
    from evaluation.suite import Report

EPILOG = """\
examples:
  avsa eval --checkpoint .avsa/checkpoints --doa .avsa/demo/raw/eval/doa
  avsa eval --checkpoint s3://avsa/ckpt --seld /data/STARSS23 --out results/seld
  avsa eval --run 3f2a… --tracking.uri http://127.0.0.1:5000 --log
"""


def add_suite_arguments(parser: argparse.ArgumentParser) -> None:
    """Short flags for where the benchmark data lives (shared with `avsa eval-service`)."""
    add_config_flag(parser, "eval.clips_url", "--clips", metavar="URL")
    add_config_flag(parser, "eval.clips", "--clip-count", metavar="N")
    add_config_flag(parser, "eval.classification_url", "--classification", metavar="URL")
    add_config_flag(parser, "eval.doa_url", "--doa", metavar="URL")
    add_config_flag(parser, "eval.seld_url", "--seld", metavar="ROOT")
    add_config_flag(parser, "eval.device", "--device")
    add_config_arguments(parser, "eval", "tracking", "storage")


def tracking_uri(cfg: Config) -> str:
    """``eval.tracking_uri``, else the runs' store (``tracking.uri``, MLFLOW_TRACKING_URI, sqlite)."""
    return cfg.eval.tracking_uri or cfg.tracking.resolved()[0]


def trusted_roots(cfg: Config) -> tuple[str, ...]:
    """``eval.trusted_roots``, else the run's own ``train.checkpoint_url``."""
    return cfg.eval.trusted_roots or (cfg.train.checkpoint_url,)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="run the benchmark suite on one checkpoint and print the table",
        description="Evaluates the frozen encoders of one checkpoint (AVC-Bin, AVSA-Bin, held-out "
        "pretext accuracy, sound classification, DOA and steered DOA, and SELD on a STARSS23-format tree; "
        "each beside random init, the input oracle and its classical baseline) and prints accuracies "
        "in % and DOA errors in degrees, "
        "each with its 95 % interval (bootstrap over scenes) and its paired difference from random "
        "init. With --log the results also go to the checkpoint's MLflow run, exactly as the "
        "evaluation service would log them (a checkpoint already evaluated is not redone).",
        epilog=EPILOG,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", metavar="URL", help="a checkpoint folder, or a checkpoint root (its latest)"
    )
    source.add_argument("--run", metavar="RUN_ID", help="the MLflow run whose newest checkpoint to evaluate")
    parser.add_argument("--log", action="store_true", help="log the results to the checkpoint's MLflow run")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="also write results.json and the tasks' files there (SELD: per-class table, DCASE CSVs)",
    )
    add_suite_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from dataclasses import replace

    from trainer.checkpoint import resolve
    from trainer.export import checkpoint_of_run

    uri = tracking_uri(cfg)
    url = args.checkpoint or checkpoint_of_run(
        replace(cfg, tracking=replace(cfg.tracking, uri=uri)), args.run
    )
    tag_url = resolve(url, url, cfg.storage)
    assert tag_url is not None
    if args.log:
        return _log(uri, tag_url, cfg)
    from evaluation.suite import evaluate_checkpoint, format_table

    report = evaluate_checkpoint(tag_url, cfg.eval, cfg.storage)
    print(format_table({f"step {report.step}": report}))
    if args.out:
        _write(report, args.out)
    return 0


def _write(report: Report, out: str) -> None:
    """``results.json`` and every task's files (SELD: per-class table, submission CSVs) under ``out``."""
    from pathlib import Path

    from evaluation.publish import write_results

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = write_results(report, folder)
    print(f"{len(written)} files (results.json and the tasks') -> {folder}")


def _log(uri: str, tag_url: str, cfg: Config) -> int:
    from mlflow.tracking import MlflowClient

    from evaluation.discovery import Checkpoint
    from evaluation.service import EvalService, run_reports
    from evaluation.suite import format_table
    from trainer.checkpoint import read_meta

    if not uri:
        raise SystemExit("--log needs a tracking server: set --tracking.uri or --eval.tracking_uri")
    meta = read_meta(tag_url, cfg.storage)
    if not meta.get("run_id"):
        raise SystemExit(f"{tag_url} was saved by an untracked run; nothing to log to")
    run = MlflowClient(uri).get_run(meta["run_id"])
    ckpt = Checkpoint(run.info.run_id, run.info.experiment_id, int(meta["step"]), tag_url, None)
    # The user named this checkpoint (or its run): it is trusted as given.
    final = EvalService(uri, cfg.eval, cfg.storage, trusted_roots=[tag_url]).evaluate(ckpt)
    if final is None:
        print(f"step {ckpt.step} of run {ckpt.run_id} is already evaluated or being evaluated")
        return 0
    print(f"step {ckpt.step} of run {ckpt.run_id}: {final.state} {final.reason}".rstrip())
    if final.state != "done":
        return 1
    print(format_table(run_reports(uri, ckpt.run_id, {ckpt.step: f"step {ckpt.step}"})))
    return 0
