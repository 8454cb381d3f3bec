"""Security against real services: credentials are written nowhere, checkpoints cannot run code, the
evaluation service trusts only its own roots, and the stack's Ray and MLflow refuse strangers.

One stack for the module with both authentications on (Ray token, MLflow basic auth): its S3 access
key, S3 secret and MLflow password are the canaries, given to the commands by flag, by config file
and by environment, then searched for in every byte the run left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from mlflow.tracking import MlflowClient

from cluster.stack import Stack, free_stack_config
from dataloading.storage import filesystem
from evaluation.discovery import checkpoints_of
from evaluation.markers import Marker, marker_key
from evaluation.service import EvalService
from tests.distributed import run_distributed
from tests.helpers import Payload, job_output, run_job, submit_job, tiny_config, write_video
from trainer.config import EvalConfig
from trainer.data import TINY
from trainer.train import EXTENSIONS_CACHE

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
TINY_FLAGS = [f"--{k}={v}" for k, v in TINY.items()]
PREPROCESS_FLAGS = ["--clip-seconds", "1", "--shard-size", "2", "--size", "256x128", "--fps", "16"]


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    cfg = free_stack_config(tmp_path_factory.mktemp("secure-stack"))
    cfg.mlflow_auth = "basic"
    stack = Stack(cfg)
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


def clean_env(home: Path) -> dict[str, str]:
    """This process's environment without any credential or Ray/MLflow client setting, and a fresh
    HOME (so no ~/.ray/auth_token or ~/.aws of the machine's user takes part)."""
    drop = ("AWS_", "MLFLOW_TRACKING", "RAY_AUTH", "RAY_ADDRESS", "RAY_API_SERVER")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    home.mkdir(parents=True, exist_ok=True)
    return env | {"HOME": str(home)}


def avsa(args: list[str], env: dict[str, str], log: Path, timeout: float = 900) -> str:
    """Run ``avsa ARGS``; its output is appended to ``log`` (one of the logs searched) and returned."""
    done = subprocess.run(
        [str(BIN / "avsa"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    with log.open("a") as fh:  # the command's own output only: its arguments hold the canaries
        fh.write(f"$ avsa {args[0]} …\n{done.stdout}{done.stderr}")
    assert done.returncode == 0, f"avsa {args[0]} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def search(folders: list[Path], needles: dict[str, str]) -> tuple[int, dict[str, list[str]]]:
    """Every file under ``folders``: how many, and for each needle the files holding it."""
    scanned, hits = 0, {name: [] for name in needles}
    for folder in folders:
        for path in [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file()):
            try:
                data = path.read_bytes()
            except OSError:
                continue  # a socket or a file removed meanwhile
            scanned += 1
            for name, needle in needles.items():
                if needle.encode() in data:
                    hits[name].append(str(path))
    return scanned, hits


def login(secure: Stack, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """An MLflow client of the secure stack, logged in (the client reads the login from the environment)."""
    env = secure.client_env()
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, env[key])
    return MlflowClient(env["MLFLOW_TRACKING_URI"])


@pytest.mark.timeout(1500)  # five commands end to end, each a fresh process (~8 min on 2 busy cores)
def test_canary_credentials_reach_no_file_and_a_resume_still_reaches_s3(
    secure: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, storage = secure.state(), secure.storage()
    client = secure.client_env()
    canaries = {
        "s3 access key": storage.access_key_id,
        "s3 secret": storage.secret_access_key,
        "mlflow password": client["MLFLOW_TRACKING_PASSWORD"],
    }
    base = clean_env(tmp_path / "home") | {
        "AWS_ENDPOINT_URL": client["AWS_ENDPOINT_URL"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_TRACKING_USERNAME": client["MLFLOW_TRACKING_USERNAME"],
        "MLFLOW_TRACKING_PASSWORD": client["MLFLOW_TRACKING_PASSWORD"],  # MLflow: by environment
        "RAY_TMPDIR": tempfile.mkdtemp(prefix="avsa-sec-", dir="/tmp"),  # short: Ray's socket paths
        # DeepSpeed's JIT-built op from the real home, not built again in the fresh one
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", os.path.expanduser(EXTENSIONS_CACHE)),
    }
    from_env = base | {
        "AWS_ACCESS_KEY_ID": storage.access_key_id,
        "AWS_SECRET_ACCESS_KEY": storage.secret_access_key,
    }
    creds_file = tmp_path / "creds.yaml"
    creds_file.write_text(
        "storage:\n"
        f"  access_key_id: {storage.access_key_id}\n"
        f"  secret_access_key: {storage.secret_access_key}\n"
    )
    by_flag = [
        "--storage.access_key_id",
        storage.access_key_id,
        "--storage.secret_access_key",
        storage.secret_access_key,
    ]
    log = tmp_path / "commands.log"
    prefix = f"s3://{state.bucket}/canary-{uuid.uuid4().hex[:8]}"
    root, experiment = f"{prefix}/checkpoints", f"canary-{uuid.uuid4().hex[:8]}"
    run = [
        *TINY_FLAGS,
        "--train.checkpoint_url", root,
        "--train.steps_per_epoch", "2",
        "--train.avc_epochs", "1",
        "--train.checkpoint_every", "2",
        "--tracking.uri", client["MLFLOW_TRACKING_URI"],
        "--tracking.experiment", experiment,
    ]  # fmt: skip

    raw = tmp_path / "raw"
    raw.mkdir()
    write_video(raw / "clip.mp4", size=(256, 128), seconds=2.5)
    # preprocess: credentials from a config file, on a throwaway local Ray
    avsa(["preprocess", "--config", str(creds_file), "--input", str(raw), "--output", f"{prefix}/shards",
          *PREPROCESS_FLAGS, "--no-progress"], base, log)  # fmt: skip
    assert not (tmp_path / "home" / ".ray" / "auth_token").exists()  # its token stayed in memory

    # train: credentials by flag; then resume from S3 with them from the environment only
    avsa(["train", *run, "--train.avsa_epochs", "0", *by_flag], base, log)
    resumed = avsa(["train", *run, "--train.avsa_epochs", "1", "--resume", "latest"], from_env, log)
    assert f"resumed from {root}/step_00000002" in resumed
    fs, path = filesystem(root, storage)
    assert fs.cat_file(f"{path}/latest").decode() == "step_00000004"
    saved = fs.cat_file(f"{path}/step_00000002/config.yaml").decode()
    assert "<secret not saved: from the command line or a config file>" in saved

    # export: from a config file; the evaluation service: from the environment
    avsa(["export", "--checkpoint", root, "--out", f"{prefix}/export", "--config", str(creds_file),
          "--tracking.uri", client["MLFLOW_TRACKING_URI"]], base, log)  # fmt: skip
    avsa(["eval-service", "--once", "--tracking-uri", client["MLFLOW_TRACKING_URI"],
          "--experiment", experiment, "--clip-count", "16", "--eval.probe_epochs", "2", "--device", "cpu",
          "--eval.trusted_roots", f"[{root}]"], from_env, log)  # fmt: skip
    mlflow = login(secure, monkeypatch)
    experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
    (trained,) = mlflow.search_runs([experiment_id], "tags.`checkpoint.latest` LIKE '%'")
    tags = trained.data.tags
    assert [Marker.from_tag(tags[marker_key(s)]).state for s in (2, 4)] == ["done", "done"]

    # Every byte written: each object in the bucket as S3 serves it, SeaweedFS's own data folder, the
    # MLflow database, user store and artifact store, every service log, the Ray session of the
    # preprocessing run and the commands' output. Only the stack's credential files may hold them.
    bucket_copy = tmp_path / "bucket"
    s3, bucket_path = filesystem(f"s3://{state.bucket}", storage)
    for obj in s3.find(bucket_path):
        target = bucket_copy / obj
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(s3.cat_file(obj))
    own = {secure.state_dir / "state.json", secure.state_dir / "s3.json"}
    written = [p for p in secure.state_dir.iterdir() if p not in own]
    scanned, hits = search(
        [bucket_copy, *written, Path(base["RAY_TMPDIR"]), tmp_path / "home", log], canaries
    )
    print(f"canary search: {scanned} files scanned, hits: {sum(map(len, hits.values()))}")
    assert scanned > 50 and hits == {name: [] for name in canaries}, hits
    _, expected = search(sorted(own), canaries)  # the search finds them where they do belong
    assert all(expected[name] for name in ("s3 access key", "s3 secret")), expected
    shutil.rmtree(base["RAY_TMPDIR"], ignore_errors=True)


def _train(rank: int, world_size: int, cfg: Any) -> str:
    from trainer.train import train

    return train(cfg).checkpoint


def _resume_each(rank: int, world_size: int, cfg: Any, tags: list[str]) -> list[str]:
    """Restore each checkpoint of ``tags`` into one DeepSpeed engine, as a resumed run does; returns
    what each load raised ("" if it loaded)."""
    import deepspeed

    from dataloading.features import FeatureSettings
    from dataloading.synth.batches import SyntheticSource
    from trainer.checkpoint import Checkpointer
    from trainer.deepspeed_config import deepspeed_config
    from trainer.models import AVSAModel
    from trainer.train import setup_distributed

    setup_distributed()
    model = AVSAModel(cfg.model, FeatureSettings.of(cfg.data).channels)
    ds_config = deepspeed_config(cfg, "cpu")
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    errors = []
    for tag in tags:
        try:
            Checkpointer(cfg, rank, world_size).load(engine, tag, SyntheticSource(cfg.data, 2))
            errors.append("")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return errors


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A real 2-step checkpoint (ZeRO 1, so DeepSpeed's optimizer states are in it too)."""
    tmp = tmp_path_factory.mktemp("real-ckpt")
    cfg = tiny_config(tmp, **{"train.steps_per_epoch": 2, "train.avc_epochs": 1, "train.avsa_epochs": 0})
    (tag,) = run_distributed(_train, 1, cfg, timeout_s=600)
    return cfg, Path(tag)


def tampered(good: Path, folder: Path, name: str, marker: Path) -> Path:
    """A copy of checkpoint ``good`` whose file ``name`` also holds a payload creating ``marker``."""
    shutil.copytree(good, folder)
    state = torch.load(good / name, weights_only=False)  # our own, just written: trusted
    state["extra"] = Payload(str(marker))
    torch.save(state, folder / name)
    return folder


def test_a_checkpoint_that_would_run_code_is_refused_by_resume_export_and_the_service(
    checkpoint: tuple[Any, Path], secure: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, good = checkpoint
    marker = tmp_path / "payload-ran"
    files = ("rank_0.pt", "mp_rank_00_model_states.pt")
    evil = [
        tampered(good, tmp_path / "ckpt" / f"step_0000000{2 * i + 2}", f, marker) for i, f in enumerate(files)
    ]
    control = tmp_path / "control-ran"
    torch.load(tampered(good, tmp_path / "control", files[0], control) / files[0], weights_only=False)
    assert control.exists()  # the payload is real: a plain torch.load runs it

    errors = run_distributed(_resume_each, 1, cfg, [str(good), *map(str, evil)], timeout_s=600)[0]
    assert errors[0] == ""  # the untouched checkpoint resumes
    for error, name in zip(errors[1:], files, strict=True):
        assert error.startswith("UnsafeCheckpointError") and f"{name} was refused" in error, error

    from trainer.export import export

    for folder, name in zip(evil, files, strict=True):
        out = tmp_path / f"export-{name}"
        with pytest.raises(ValueError, match=rf"{name} was refused: .* could run code"):
            export(str(folder), str(out), tiny_config(tmp_path))
        assert not out.exists()

    mlflow = login(secure, monkeypatch)
    run_id = mlflow.create_run(mlflow.create_experiment(f"evil-{uuid.uuid4().hex[:8]}")).info.run_id
    for i, folder in enumerate(evil):
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps(meta | {"run_id": run_id, "step": 2 * i + 2}))
    mlflow.set_tag(run_id, "checkpoint.latest", str(evil[-1]))
    suite = EvalConfig(clips=16, probe_epochs=2, device="cpu")
    service = EvalService(mlflow.tracking_uri, suite, trusted_roots=[str(tmp_path)])
    finals = [service.evaluate(c) for c in checkpoints_of(mlflow.get_run(run_id))]
    assert [m.state for m in finals] == ["failed", "failed"]
    for final, name in zip(finals, files, strict=True):
        assert f"{name} was refused" in final.reason, final.reason
    assert not marker.exists()  # nothing ran, anywhere


def test_the_service_evaluates_only_under_its_trusted_roots_and_goes_on(
    checkpoint: tuple[Any, Path], secure: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, good = checkpoint
    mlflow = login(secure, monkeypatch)
    experiment = mlflow.create_experiment(f"roots-{uuid.uuid4().hex[:8]}")
    runs = {}
    for name in ("elsewhere", "trusted"):
        folder = tmp_path / name / "step_00000002"
        shutil.copytree(good, folder)
        runs[name] = mlflow.create_run(experiment, run_name=name).info.run_id
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps(meta | {"run_id": runs[name]}))
        mlflow.set_tag(runs[name], "checkpoint.latest", str(folder))
    service = EvalService(
        mlflow.tracking_uri,
        EvalConfig(
            clips=16, probe_epochs=2, device="cpu", experiments=(mlflow.get_experiment(experiment).name,)
        ),
        trusted_roots=[str(tmp_path / "trusted"), str(tmp_path / "else")],  # a look-alike prefix
    )
    refused, evaluated = service.run_once()  # the oldest run first
    untrusted = str(tmp_path / "elsewhere" / "step_00000002")
    assert refused.state == "failed" and f"refused: {untrusted} is outside the trusted" in refused.reason
    assert evaluated.state == "done"
    tags = {name: mlflow.get_run(run_id).data.tags for name, run_id in runs.items()}
    assert Marker.from_tag(tags["elsewhere"][marker_key(2)]).state == "failed"
    assert Marker.from_tag(tags["trusted"][marker_key(2)]).state == "done"


def test_ray_job_submit_needs_the_token(secure: Stack, tmp_path: Path) -> None:
    env = secure.client_env()
    stranger = clean_env(tmp_path / "home") | {"RAY_ADDRESS": env["RAY_API_SERVER_ADDRESS"]}
    job = ("python", "-c", "print('ran as you')")
    code, logs = job_output(submit_job(stranger, *job), timeout_s=180)
    assert code != 0 and "ran as you" not in logs
    assert "token authentication is enabled" in logs  # Ray says why
    wrong = stranger | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    assert job_output(submit_job(wrong, *job), timeout_s=180)[0] != 0
    assert "ran as you" in run_job(clean_env(tmp_path / "home") | env, *job, timeout_s=300)


def test_mlflow_refuses_an_unauthenticated_client(secure: Stack) -> None:
    env = secure.client_env()
    search_url = f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search"
    body = {"max_results": 1}
    assert requests.post(search_url, json=body, timeout=30).status_code == 401
    wrong = ("avsa", "not-the-password")
    assert requests.post(search_url, json=body, auth=wrong, timeout=30).status_code == 401
    login = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    assert requests.post(search_url, json=body, auth=login, timeout=30).status_code == 200
