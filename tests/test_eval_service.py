"""The evaluation service against a real MLflow server and checkpoints of a real (tiny) training run:
exactly-once evaluation across a SIGKILL and restart, failure records for broken checkpoints, and
plots that open as images."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from cluster.stack import Stack
from dataloading.dcase import parse_labels
from evaluation.discovery import Checkpoint, checkpoints_of
from evaluation.markers import Marker, marker_key
from evaluation.service import MAX_ATTEMPTS, EvalService, format_status, run_reports, status
from evaluation.suite import format_table
from tests.distributed import run_distributed
from tests.helpers import (
    SERVICE_ARGS,
    Trained,
    start_service,
    write_classification_set,
    write_doa_set,
    write_starss_tree,
)
from trainer.config import Config, EvalConfig, load_config
from trainer.data import TINY

pytestmark = pytest.mark.integration

STEPS = (2, 4)
STORAGE_KEYS = ("endpoint_url", "access_key_id", "secret_access_key")


def _train(rank: int, world_size: int, cfg: Config) -> str | None:
    from trainer.train import train

    return train(cfg).run_id


def _tracked_run(stack: Stack, tmp: Path, trusted: str, checkpoint_url: str) -> Trained:
    """A 4-step tiny run tracked on the stack's MLflow, with checkpoints after steps 2 and 4 under
    ``checkpoint_url``, and small labeled eval sets."""
    uri = stack.client_env()["MLFLOW_TRACKING_URI"]
    experiment = f"eval-service-{uuid.uuid4().hex[:8]}"
    storage = stack.storage()
    overrides = {
        **TINY,
        "train.checkpoint_url": checkpoint_url,
        "train.steps_per_epoch": 2,
        "train.avc_epochs": 1,
        "train.avsa_epochs": 1,
        "train.checkpoint_every": 2,
        "tracking.uri": uri,
        "tracking.experiment": experiment,
        **{f"storage.{k}": getattr(storage, k) for k in STORAGE_KEYS},
    }
    (run_id,) = run_distributed(_train, 1, load_config(None, overrides), timeout_s=300)
    write_classification_set(str(tmp / "cls"), per_class=6)
    write_doa_set(str(tmp / "doa"), clips=20)
    data = ["--classification", str(tmp / "cls"), "--doa", str(tmp / "doa"), "--experiment", experiment]
    data += ["--eval.trusted_roots", f"[{trusted}]"]
    suite = EvalConfig(
        clips=16, classification_url=str(tmp / "cls"), doa_url=str(tmp / "doa"), probe_epochs=10
    )
    env = {**os.environ, **stack.client_env()}
    return Trained(uri, run_id, env, experiment, [*SERVICE_ARGS, *data], suite, trusted)


@pytest.fixture(scope="module")
def trained(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A tracked run with local checkpoints (see :func:`_tracked_run`)."""
    tmp = tmp_path_factory.mktemp("evalsvc")
    return _tracked_run(stack, tmp, str(tmp_path_factory.getbasetemp()), str(tmp / "ckpt"))


@pytest.fixture
def service_process(trained: Trained, tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    """Started services (``avsa eval-service`` subprocesses); any still running at the end is stopped."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)


def _markers(client: MlflowClient, run_id: str) -> dict[int, Marker]:
    tags = client.get_run(run_id).data.tags
    return {s: Marker.from_tag(tags[marker_key(s)]) for s in STEPS if marker_key(s) in tags}


def _wait(
    predicate: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen, log: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(
                f"no {what} (service exit code {proc.poll()}); its log:\n{log.read_text()[-4000:]}"
            )
        time.sleep(0.5)


def _start_until_evaluating(run: Trained, log: Path, procs: list[subprocess.Popen]) -> subprocess.Popen:
    """A service started on ``run``, once it is evaluating one of its checkpoints."""
    client = MlflowClient(run.uri)
    service = start_service(run, log)
    procs.append(service)
    _wait(
        lambda: any(m.eval_run for m in _markers(client, run.run_id).values()),
        240,
        "running evaluation",
        service,
        log,
    )
    return service


def test_each_checkpoint_evaluated_exactly_once_across_a_sigkill(
    trained: Trained, service_process: list[subprocess.Popen], tmp_path: Path
) -> None:
    client = MlflowClient(trained.uri)
    log = tmp_path / "service.log"
    first = _start_until_evaluating(trained, log, service_process)
    os.kill(first.pid, signal.SIGKILL)  # mid-evaluation: no cleanup, the lease is left behind
    first.wait(30)
    interrupted = {s: m for s, m in _markers(client, trained.run_id).items() if m.state == "running"}
    (killed_step,) = interrupted  # exactly one evaluation was in flight

    second = start_service(trained, log)
    service_process.append(second)
    _wait(
        lambda: [m.state for m in _markers(client, trained.run_id).values()] == ["done", "done"],
        400,
        "completion of both checkpoints",
        second,
        log,
    )
    markers = _markers(client, trained.run_id)
    assert markers[killed_step].attempt == 2  # redone once, since the first attempt never finished
    assert [m.attempt for s, m in markers.items() if s != killed_step] == [1]

    run = client.get_run(trained.run_id)
    eval_keys = [k for k in run.data.metrics if k.startswith("eval/")]
    assert {"eval/doa/intensity/mean_error_deg", "eval/classification/logmel_stats/acc"} <= set(eval_keys)
    assert "eval/avsa_bin/model/acc" in eval_keys and "eval/avc_bin/random_init/acc" in eval_keys
    for key in eval_keys:  # exactly one value per checkpoint step
        assert sorted(m.step for m in client.get_metric_history(trained.run_id, key)) == list(STEPS), key

    evals = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`avsa.eval.parent_run` = '{trained.run_id}'"
    )
    finished = sorted(int(r.data.tags["avsa.eval.step"]) for r in evals if r.info.status == "FINISHED")
    assert finished == list(STEPS)
    assert {r.info.run_id for r in evals if r.info.status == "FINISHED"} == {
        m.eval_run for m in markers.values()
    }
    assert [r.info.status for r in evals if r.info.run_id == interrupted[killed_step].eval_run] == ["KILLED"]

    # A further sweep finds nothing to do: done is final.
    assert trained.service().queue() == []
    cli = [sys.executable, "-m", "cluster.cli", "eval-service", "--status", "--tracking-uri", trained.uri]
    table = subprocess.run(cli, env=trained.env, capture_output=True, text=True, check=True).stdout
    assert "2 done" in table and trained.run_id in table

    reports = run_reports(trained.uri, trained.run_id, {2: "early", 4: "late", 6: "not saved"})
    assert list(reports) == ["early", "late"]
    late = reports["late"].result("doa")
    assert (
        late is not None
        and late.scores["intensity"]["acc20"].mean == run.data.metrics["eval/doa/intensity/acc20"]
        and late.scores["intensity"]["acc20"].high == run.data.metrics["eval/doa/intensity/acc20_ci_high"]
    )
    assert "random init" in format_table(reports)

    _check_plots(client, trained.run_id, markers[STEPS[-1]].eval_run, tmp_path)


def test_an_s3_and_mlflow_outage_mid_evaluation_leaves_each_checkpoint_evaluated_once(
    stack: Stack,
    service_process: list[subprocess.Popen],
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    root = f"s3://{stack.cfg.bucket}/evalsvc-{uuid.uuid4().hex[:8]}"
    tmp = tmp_path_factory.mktemp("evalsvc-outage")
    run = _tracked_run(stack, tmp, root, f"{root}/ckpt")
    client = MlflowClient(run.uri)
    log = tmp_path / "service.log"
    service = _start_until_evaluating(run, log, service_process)
    for name in ("s3", "mlflow"):  # both servers die mid-evaluation, and come back 20 s later
        stack.kill(name)
    time.sleep(20)
    stack.heal(["s3", "mlflow"])
    _wait(
        lambda: [m.state for m in _markers(client, run.run_id).values()] == ["done", "done"],
        400,
        "completion of both checkpoints after the outage",
        service,
        log,
    )

    assert service.poll() is None  # the service rode through the outage
    for key in [k for k in client.get_run(run.run_id).data.metrics if k.startswith("eval/")]:
        assert sorted(m.step for m in client.get_metric_history(run.run_id, key)) == list(STEPS), key
    evals = client.search_runs(
        [client.get_experiment_by_name(run.experiment).experiment_id],
        filter_string=f"tags.`avsa.eval.parent_run` = '{run.run_id}'",
    )
    finished = sorted(int(r.data.tags["avsa.eval.step"]) for r in evals if r.info.status == "FINISHED")
    assert finished == list(STEPS)  # one finished evaluation per checkpoint; a cut one is KILLED
    said = log.read_text()
    assert "Traceback" not in said, said[-4000:]
    assert "unreachable" in said or "retrying" in said, said[-4000:]


def _open_image(client: MlflowClient, run_id: str, path: str, tmp: Path) -> Image.Image:
    local = client.download_artifacts(run_id, path, str(tmp))
    image = Image.open(io.BytesIO(Path(local).read_bytes()))
    image.load()
    assert image.size[0] > 100 and image.size[1] > 100
    return image


def _check_plots(client: MlflowClient, run_id: str, eval_run: str, tmp: Path) -> None:
    step_dir = f"eval/step_{STEPS[-1]:08d}"
    assert {a.path for a in client.list_artifacts(run_id, "eval")} >= {"eval/metrics_vs_step.png", step_dir}
    for path in ("eval/metrics_vs_step.png", f"{step_dir}/report.png"):
        _open_image(client, run_id, path, tmp / "origin")
    html = Path(client.download_artifacts(run_id, f"{step_dir}/report.html", str(tmp / "html"))).read_text()
    assert "<img" in html and "avsa_bin" in html
    names = {a.path for a in client.list_artifacts(eval_run)}
    assert {
        "classification_confusion.png",
        "doa_polar.png",
        "report.png",
        "report.html",
        "results.json",
    } <= names
    for name in ("classification_confusion.png", "doa_polar.png", "report.png"):
        _open_image(client, eval_run, name, tmp / "eval")
    results = json.loads(
        Path(client.download_artifacts(eval_run, "results.json", str(tmp / "json"))).read_text()
    )
    assert results["step"] == STEPS[-1] and set(results["tasks"]) == {
        "avc_bin",
        "avsa_bin",
        "pretext",
        "classification",
        "doa",
        "doa_steered",
    }
    doa = results["tasks"]["doa"]
    assert len(doa["items"]["mean_error_deg"]["groups"]) == len(
        doa["items"]["mean_error_deg"]["values"]["model"]
    )
    assert doa["scores"]["model"]["mean_error_deg"]["low"] <= doa["scores"]["model"]["mean_error_deg"]["high"]


def _copy_checkpoint(good: str, folder: Path, run_id: str, step: int) -> Path:
    """A copy of checkpoint ``good`` at ``folder`` that says it is step ``step`` of run ``run_id``."""
    shutil.copytree(good, folder)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "run_id": run_id, "step": step}))
    return folder


def test_a_corrupt_checkpoint_gets_a_failure_record_and_the_service_goes_on(
    trained: Trained, tmp_path: Path
) -> None:
    client, source = MlflowClient(trained.uri), trained.run()
    broken_run = trained.run_beside("corrupt")
    good = source.data.tags["checkpoint.latest"]
    root = tmp_path / "ckpt"
    for step, damage in ((2, "truncate"), (4, "none")):
        folder = _copy_checkpoint(good, root / f"step_{step:08d}", broken_run, step)
        if damage == "truncate":
            for name in os.listdir(folder):
                if name.endswith(".pt"):
                    (folder / name).write_bytes((folder / name).read_bytes()[:100])
    client.set_tag(broken_run, "checkpoint.latest", str(root / "step_00000004"))
    client.set_terminated(broken_run)

    service = trained.service(device="cpu")
    finals = [service.evaluate(c) for c in checkpoints_of(client.get_run(broken_run))]
    assert [m.state if m else None for m in finals] == ["failed", "done"]  # went on after the failure
    failed = Marker.from_tag(client.get_run(broken_run).data.tags[marker_key(2)])
    assert (
        failed.state == "failed" and failed.reason
    )  # e.g. "RuntimeError: ... failed finding central directory"
    eval_run = client.get_run(failed.eval_run)
    assert eval_run.info.status == "FAILED" and eval_run.data.tags["avsa.eval.error"] == failed.reason
    assert "failed" in format_status(status(trained.uri, experiments=[trained.experiment]))


def test_a_run_whose_checkpoints_cannot_be_listed_is_reported_and_does_not_hold_up_the_others(
    trained: Trained, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = MlflowClient(trained.uri)
    gone = trained.run_beside("deleted-checkpoints")
    client.set_tag(gone, "checkpoint.latest", str(tmp_path / "removed" / "step_00000002"))
    client.set_terminated(gone)

    with caplog.at_level(logging.WARNING, logger="evaluation.discovery"):
        found = status(trained.uri, experiments=[trained.experiment])
        status(trained.uri, experiments=[trained.experiment])  # a second sweep does not repeat it
    assert {c.run_id for c in found} >= {trained.run_id} and gone not in {c.run_id for c in found}
    warnings = [r.getMessage() for r in caplog.records if gone in r.getMessage()]
    assert len(warnings) == 1 and "FileNotFoundError" in warnings[0] and "removed" in warnings[0]

    with pytest.raises(ValueError, match="no experiment named no-such-experiment"):
        status(trained.uri, experiments=["no-such-experiment"])


def test_a_checkpoint_interrupted_too_often_is_given_up(trained: Trained, tmp_path: Path) -> None:
    client, source = MlflowClient(trained.uri), trained.run()
    run_id = trained.run_beside("crashes")
    ckpt = Checkpoint(run_id, source.info.experiment_id, 2, str(tmp_path / "never-read"), None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    crashed = Marker("running", MAX_ATTEMPTS, f"{socket.gethostname()}:{dead.pid}", time.time() + 600)
    client.set_tag(run_id, marker_key(2), crashed.to_tag())
    final = trained.service().evaluate(ckpt)
    assert (
        final is not None and final.state == "failed" and f"interrupted {MAX_ATTEMPTS} times" in final.reason
    )
    assert Marker.from_tag(client.get_run(run_id).data.tags[marker_key(2)]) == final


def test_seld_through_the_service_logs_metrics_table_plots_and_dcase_csvs(
    trained: Trained, tmp_path: Path
) -> None:
    client, source = MlflowClient(trained.uri), trained.run()
    run_id = trained.run_beside("seld")
    folder = _copy_checkpoint(
        source.data.tags["checkpoint.latest"], tmp_path / "ckpt" / "step_00000004", run_id, 4
    )
    write_starss_tree(tmp_path / "starss", train=2, test=2, seconds=6.0)
    suite = EvalConfig(
        clips=16,
        seld_url=str(tmp_path / "starss"),
        seld_epochs=2,
        probe_epochs=10,
        experiments=(trained.experiment,),
        device="cpu",
    )
    service = EvalService(trained.uri, suite, trusted_roots=[trained.trusted])
    final = service.evaluate(Checkpoint(run_id, source.info.experiment_id, 4, str(folder), None))
    assert final is not None and final.state == "done", final

    metrics = client.get_run(run_id).data.metrics
    for method in ("model", "random_init", "crnn", "intensity"):
        for metric in ("seld_score", "er20", "f20", "le_cd_deg", "lr_cd"):
            assert f"eval/seld/{method}/{metric}_ci_low" in metrics, (method, metric)
    assert "eval/seld/model-random_init/seld_score" in metrics
    names = {a.path for a in client.list_artifacts(final.eval_run, "seld")}
    assert {"seld/per_class.md", "seld/model", "seld/crnn", "seld/intensity"} <= names
    csvs = {a.path for a in client.list_artifacts(final.eval_run, "seld/model/dev-test-sony")}
    assert len(csvs) == 2 and all(p.endswith(".csv") for p in csvs)
    local = client.download_artifacts(final.eval_run, sorted(csvs)[0], str(tmp_path / "csv"))
    parse_labels(Path(local).read_text(), local)  # a valid DCASE submission file
    table = Path(client.download_artifacts(final.eval_run, "seld/per_class.md", str(tmp_path))).read_text()
    assert "| female speech |" in table
    _open_image(client, final.eval_run, "seld_per_class.png", tmp_path / "png")
