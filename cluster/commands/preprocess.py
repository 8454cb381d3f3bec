"""`avsa preprocess`: raw 360° videos with FOA audio -> WebDataset shards, DALI indexes and a manifest."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys

from rich.console import Console
from rich.table import Table

from cluster.cli import add_config_arguments, add_config_flag, parse_size
from dataloading.schema import INPUT_REJECTED, Manifest
from trainer.config import Config

log = logging.getLogger(__name__)

EPILOG = """\
inputs: .mp4/.mkv/.mov equirectangular videos with a 4-channel FOA audio track, or with a
sidecar STEM.flac/STEM.wav beside them; AmbiX (ACN/SN3D) or FuMa (--input-format, or a
"fuma" metadata tag under --input-format auto). --input is a folder (searched recursively),
one video, or a listing: .txt (one URL per line) or .json (a list of URLs).

--layout starss23|yt360 reads --input as the published tree of that dataset instead, pairing
video, FOA audio and labels by file stem (a file without its partner is rejected with why):
  starss23  foa_dev/dev-{train,test}-*/foldF_roomR_mixNNN.wav (24 kHz FOA), video_dev/<same>.mp4,
            metadata_dev/<same>.csv (DCASE labels: each clip's JSON gets its events as "labels",
            100-ms frames from the clip start, and "dataset": split, fold, room); mic_dev refused
  yt360     video/{YTID}-{START}.mp4, audio/{YTID}-{START}.m4a, train.txt/test.txt (the split,
            in each clip's "dataset"), segments.txt

writes under --output (a local path or s3:// URL):
  shard-NNNNNN.tar   WebDataset samples KEY.mp4 (VP9, constant fps, short GOP), KEY.flac
                     (4-channel AmbiX at --audio-rate), KEY.json (source, times, object
                     directions, detector and scores; sound peaks are found by the loader)
  shard-NNNNNN.idx   DALI index for fn.readers.webdataset
  manifest.json      shards (samples, bytes, sha256), every input's status, rejections with
                     reasons; accepted + rejected = inputs

Re-running the same command skips shards whose checksum matches the manifest and redoes the
rest; a dataset of an older schema_version (dataloading/schema.py) is rewritten whole, one of a
newer version refused. Exit status: 0 if any sample was made, 1 if nothing could be processed, 2 on bad usage.

Ray: joins --ray-address (or $RAY_ADDRESS, as inside `ray job submit`); otherwise starts a
local Ray for the run. Runs unchanged as
  ray job submit --working-dir . -- avsa preprocess --input s3://b/raw --output s3://b/shards

examples:
  avsa preprocess --input .avsa/demo/raw --output .avsa/demo/shards
  avsa preprocess --input s3://avsa/raw --output s3://avsa/shards --clip-seconds 10 --shard-size 64
  avsa preprocess --layout starss23 --input /data/STARSS23 --output s3://avsa/starss23
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "preprocess",
        help="turn raw 360° videos with FOA into WebDataset shards on Ray actors",
        description="Probe, cut, transcode and pack 360° videos with first-order ambisonic audio into "
        "WebDataset shards with DALI indexes and a manifest, on a pool of Ray actors (one per CPU). "
        "Resumable; bad inputs are rejected with a reason, never silently dropped.",
        epilog=EPILOG,
    )
    for name, flag, metavar in (
        ("input", "--input", "URL|LISTING"),
        ("layout", "--layout", None),
        ("output", "--output", "URL"),
        ("clip_seconds", "--clip-seconds", "S"),
        ("shard_size", "--shard-size", "N"),
        ("fps", "--fps", None),
        ("codec", "--codec", None),
        ("gop", "--gop", "N"),
        ("audio_rate", "--audio-rate", "HZ"),
        ("input_format", "--input-format", None),
        ("detector", "--detector", "SPEC"),
        ("workers", "--workers", "N"),
    ):
        add_config_flag(parser, f"preprocess.{name}", flag, metavar=metavar)
    add_config_flag(parser, "preprocess.video_size", "--size", value=parse_size, metavar="WxH")
    parser.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="Ray cluster to join (default $RAY_ADDRESS; else a local Ray is started)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no live progress line")
    add_config_arguments(parser, "preprocess", "storage")
    parser.set_defaults(func=run)


def connect(address: str | None, workers: int) -> None:
    """Join the Ray cluster at ``address`` (or $RAY_ADDRESS), or start a local one on 127.0.0.1.

    Ray is imported here, not at module level: whether its ports stay on loopback is read from the
    environment when Ray is first imported, and `avsa --help` should not pay for the import.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        # a dashboard URL (what `ray job submit` wants) cannot be joined by a driver
        log.warning(
            "RAY_ADDRESS %s is a dashboard URL; starting a local Ray (use --ray-address HOST:PORT)", address
        )
        os.environ.pop("RAY_ADDRESS")
        address = None
    if address is None or is_loopback(address):
        # otherwise Ray rewrites 127.0.0.1 to the machine's network address, where a loopback head is not
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    has_token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
    if address is None and os.environ.get("RAY_AUTH_MODE", "token") == "token" and not has_token:
        # A throwaway cluster on loopback, which any user of the machine could join (and run code as
        # you) without a token. Ray's own default would write one to ~/.ray/auth_token, which then
        # turns token auth on for every later Ray head of yours (their clients meet 401s); this token
        # lives only in this process and the Ray processes it starts.
        os.environ |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    import ray
    from ray._raylet import AuthenticationTokenLoader

    # Ray loads its token once per process; a process that joins a second cluster needs that one's.
    AuthenticationTokenLoader.instance().reset_cache()

    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=workers or None, _node_ip_address="127.0.0.1", include_dashboard=False)


def is_loopback(address: str) -> bool:
    """True for ``127.x.x.x:port``, ``localhost:port`` and ``[::1]:port``."""
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def run(args: argparse.Namespace, cfg: Config) -> int:
    p = cfg.preprocess
    try:
        connect(args.ray_address, p.workers)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        print(f"avsa preprocess: cannot reach Ray at {args.ray_address}: {exc}", file=sys.stderr)
        return 2
    import ray

    from cluster.preprocess import PreprocessError
    from cluster.preprocess import run as preprocess

    try:
        manifest = preprocess(p.input, p.output, p, cfg.storage, progress=not args.no_progress)
    except PreprocessError as exc:
        print(f"avsa preprocess: {exc}", file=sys.stderr)
        return 2
    finally:
        ray.shutdown()
    summarize(manifest, p.output)
    return 0 if manifest.totals()["samples"] > 0 else 1


def summarize(manifest: Manifest, output: str) -> None:
    """Print the totals and every rejected input with its reason."""
    console = Console(stderr=True)
    totals, run = manifest.totals(), manifest.run
    assert run is not None, "a manifest that preprocessing returns records its run"
    rate = totals["samples"] / run.seconds if run.seconds else 0.0
    console.print(
        f"[bold]{totals['accepted']}[/bold] of {totals['inputs']} inputs accepted, "
        f"{totals['rejected']} rejected; {totals['samples']} clips in {totals['shards']} shards "
        f"({totals['bytes'] / 1e6:.1f} MB) in {run.seconds:.1f} s ({rate:.2f} clips/s) -> {output}"
    )
    line = "shards this run: " + ", ".join(f"{n} {s}" for s, n in run.shards.items())
    if len(run.shards_by_node) > 1:
        line += " (by node: " + ", ".join(f"{node} {n}" for node, n in run.shards_by_node.items()) + ")"
    if run.shards_given_out_again:
        line += f"; {run.shards_given_out_again} given out again after a lost worker"
    console.print(line)
    rejected = {u: e for u, e in manifest.inputs.items() if e.status == INPUT_REJECTED}
    if rejected:
        table = Table("rejected input", "reason")
        for url, entry in rejected.items():
            table.add_row(url, entry.reason or "")
        console.print(table)
